"""The steering engine against the plain hooked reference, for every mode x scale x positions."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from featsweep.config import SteeringConfig
from featsweep.errors import FeatsweepError
from featsweep.engines.intervention import (Condition, SteeringEngine, mean_activations, reference_run, run_conditions,
                                steering_scales)
from featsweep.results import PERFORMANCE_COLUMNS
from featsweep.stages.task import baseline_performance
from helpers import assert_engine_matches_reference, fake_attrs, llama_subject, resid_grads

ROOT = Path(__file__).resolve().parents[2]
MODES = ["negative", "zero_ablate", "mean_ablate"]
SCALES = ["gen_max", "local_max", "unit"]
POSITIONS = ["all", "non_bos", "last"]


@pytest.fixture(scope="module")
def setup(tiny_subject, tiny_task):
    rng = np.random.default_rng(1)
    gen_max = rng.uniform(0.5, 3.0, tiny_subject.d_sae)
    attrs = fake_attrs(tiny_subject, tiny_task)
    means = mean_activations(tiny_subject, tiny_task)
    features = rng.choice(tiny_subject.d_sae, 4, replace=False)
    conditions = [Condition((int(f),), 3.0) for f in features[:3]] + [
        Condition(tuple(int(f) for f in features), 1.5), Condition((int(features[0]),), -2.0)]
    return SimpleNamespace(gen_max=gen_max, attrs=attrs, means=means, conditions=conditions)


@pytest.mark.parametrize("mode,scale,positions", list(itertools.product(MODES, SCALES, POSITIONS)))
def test_engine_matches_reference(tiny_subject, tiny_task, setup, mode, scale, positions):
    cfg = SteeringConfig(mode=mode, scale=scale, positions=positions, batch_size=8)  # chunks split prompts too
    scales = steering_scales(scale, tiny_subject.d_sae, setup.gen_max, setup.attrs)
    assert_engine_matches_reference(tiny_subject, tiny_task, cfg, scales, setup.conditions, setup.means)


@pytest.mark.parametrize("positions", ["all", "non_bos"])
def test_engine_without_last_block_shortcut(tiny_subject, tiny_task, setup, positions):
    """The generic path (last block on every recomputed position, for other architectures) is exact too."""
    cfg = SteeringConfig(mode="negative", positions=positions, batch_size=32)
    scales = np.ones(tiny_subject.d_sae)
    engine = SteeringEngine(tiny_subject, tiny_task, cfg, scales)
    assert engine._kv_shortcut
    engine._kv_shortcut = False
    ref = reference_run(tiny_subject, tiny_task, cfg, scales, setup.conditions[:2])
    np.testing.assert_allclose(engine.run(setup.conditions[:2], progress=False)["logit_diff"], ref["logit_diff"], atol=1e-4)


def test_negative_sign_and_scale(tiny_subject, tiny_task, setup):
    """negative mode pushes AGAINST the decoder direction: delta = -factor * scale_i * W_dec[i]."""
    cfg = SteeringConfig(mode="negative", positions="all")
    scales = np.linspace(0.5, 2.0, tiny_subject.d_sae)
    engine = SteeringEngine(tiny_subject, tiny_task, cfg, scales)
    cond = [Condition((5, 9), 2.0)]
    group = engine.groups[0]
    rows = torch.zeros(1, dtype=torch.long)
    x = group.resid[rows]
    delta = engine.deltas(x, group, rows, rows, engine._plan(cond), None)
    W = tiny_subject.sae.W_dec
    expected = -2.0 * (scales[5] * W[5] + scales[9] * W[9])
    torch.testing.assert_close(delta[0, -1], expected.float(), atol=1e-6, rtol=1e-5)
    assert delta.shape[1] == x.shape[1]


def test_zero_factor_is_baseline(tiny_subject, tiny_task):
    cfg = SteeringConfig(mode="negative", positions="all", batch_size=64)
    eng = SteeringEngine(tiny_subject, tiny_task, cfg, np.ones(tiny_subject.d_sae)).run([Condition((3,), 0.0)], progress=False)
    base = baseline_performance(tiny_subject.model, tiny_task)
    np.testing.assert_allclose(eng["logit_diff"][0], base["logit_diff"], atol=1e-4)
    np.testing.assert_allclose(eng["prob"][0], base["prob"], atol=1e-5)


def test_duplicates_and_order(tiny_subject, tiny_task):
    cfg = SteeringConfig(mode="negative", positions="last", batch_size=16)
    engine = SteeringEngine(tiny_subject, tiny_task, cfg, np.ones(tiny_subject.d_sae))
    a, b = Condition((1,), 5.0), Condition((2, 3), 5.0)
    out = engine.run([a, b, a], progress=False)
    np.testing.assert_array_equal(out["logit_diff"][0], out["logit_diff"][2])
    alone = engine.run([b], progress=False)
    np.testing.assert_allclose(out["logit_diff"][1], alone["logit_diff"][0], atol=1e-5)
    assert engine.run([], progress=False)["prob"].shape == (0, tiny_task.n)


def test_run_conditions_dispatch(tiny_subject, tiny_task):
    conds = [Condition((7,), 4.0)]
    fast = run_conditions(tiny_subject, tiny_task, SteeringConfig(engine="fast"), np.ones(tiny_subject.d_sae), conds, progress=False)
    ref = run_conditions(tiny_subject, tiny_task, SteeringConfig(engine="reference"), np.ones(tiny_subject.d_sae), conds, progress=False)
    np.testing.assert_allclose(fast["logit_diff"], ref["logit_diff"], atol=1e-4)


def test_steering_scales(tiny_subject, setup):
    d = tiny_subject.d_sae
    np.testing.assert_array_equal(steering_scales("unit", d, None, None), np.ones(d))
    np.testing.assert_array_equal(steering_scales("gen_max", d, setup.gen_max, None), setup.gen_max)
    local = steering_scales("local_max", d, None, setup.attrs)
    expected = setup.attrs.table.groupby("feature")["activation"].max()
    np.testing.assert_allclose(local[expected.index], expected.to_numpy())
    absent = np.setdiff1d(np.arange(d), expected.index)
    assert (local[absent] == 0).all()
    with pytest.raises(FeatsweepError, match="gen_max"):
        steering_scales("gen_max", d, None, None)
    with pytest.raises(FeatsweepError, match="one value per SAE feature"):
        steering_scales("gen_max", d, np.ones(3), None)
    with pytest.raises(FeatsweepError, match="local_max"):
        steering_scales("local_max", d, None, None)


def test_mean_activations(tiny_subject, tiny_task, setup):
    acts = []
    for tokens in tiny_task.tokens:
        x = tiny_subject.model(tokens[None], stop_at_layer=tiny_subject.layer)[0, 1:]
        acts.append(tiny_subject.sae.encode(x).detach())
    np.testing.assert_allclose(setup.means, torch.cat(acts).mean(0).numpy(), atol=1e-5)


def test_bad_conditions(tiny_subject, tiny_task, setup):
    cfg = SteeringConfig()
    engine = SteeringEngine(tiny_subject, tiny_task, cfg, np.ones(tiny_subject.d_sae))
    with pytest.raises(FeatsweepError, match="empty"):
        engine.run([Condition((), 1.0)])
    with pytest.raises(FeatsweepError, match="outside"):
        engine.run([Condition((10_000,), 1.0)])
    with pytest.raises(FeatsweepError, match="mean_activations"):
        SteeringEngine(tiny_subject, tiny_task, SteeringConfig(mode="mean_ablate"), np.ones(tiny_subject.d_sae))


@pytest.mark.parametrize("mode", MODES)
def test_linear_preview_first_order(tiny_subject, tiny_task, setup, mode):
    """For a small push the first-order estimate matches the exact change in logit difference."""
    cfg = SteeringConfig(mode=mode, positions="non_bos", batch_size=32)
    factor = 0.02 if mode == "negative" else 1.0
    engine = SteeringEngine(tiny_subject, tiny_task, cfg, np.ones(tiny_subject.d_sae), setup.means)
    conds = [Condition((int(f),), factor) for f in range(0, tiny_subject.d_sae, 16)]
    exact = engine.run(conds, progress=False)["logit_diff"]
    base = baseline_performance(tiny_subject.model, tiny_task)["logit_diff"].to_numpy()
    linear = engine.linear_preview(conds, setup.attrs.resid_grad)
    delta = exact - base[None, :]
    assert linear.shape == delta.shape
    if mode == "negative":
        np.testing.assert_allclose(linear, delta, atol=2e-3 + 0.05 * np.abs(delta).max())
    assert np.corrcoef(linear.ravel(), delta.ravel())[0, 1] > 0.9


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "steering.py"), "--prompts", "4", "--conditions", "2",
         "--layers", "2", "--d-model", "64", "--d-sae", "256", "--vocab", "500"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # speedup_vs_tl_blocks: the same engine on TransformerLens's blocks beside the fused tail (and non_prefix on Llama)
    assert {"speedup_all", "speedup_last", "engine_gflops", "matmul_peak_gflops", "speedup_vs_tl_blocks",
            "ceiling_vs_tl_blocks", "fused_matmul_share"} <= set(result)
    assert all(v > 0 for v in result.values())
    assert result["ceiling_vs_tl_blocks"] >= 1  # 1 / the matmuls' share of the TransformerLens blocks' time


def test_benchmark_rejects_a_reference_count_below_one():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "steering.py"), "--reference-conditions", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--reference-conditions: invalid positive_int value: '0'" in out.stderr


# ---- fused tail and token budget (issue 15) ---------------------------------------------------------------


def gelu_new_subject(normalization_type: str = "LN", seed: int = 0):
    """A small random GPT-2-like model (gelu_new, learned positions) with a random SAE at blocks.1."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from featsweep.subjects.loading import Subject

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=3, d_model=48, n_heads=4, d_head=12, d_mlp=96, d_vocab=60, n_ctx=16,
                                  act_fn="gelu_new", normalization_type=normalization_type, seed=seed, device="cpu",
                                  original_architecture="GPT2LMHeadModel")
    model = HookedTransformer(cfg).eval()
    sae = StandardSAE(StandardSAEConfig(d_in=48, d_sae=64)).eval()
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    return Subject(model=model, sae=sae, hook_name="blocks.1.hook_resid_pre", layer=1, identity="gelu_new-test")


def random_task(vocab: int, n: int = 9, seed: int = 0):
    from featsweep.config import Contrast
    from featsweep.stages.task import Task

    gen = torch.Generator().manual_seed(seed)
    lengths = [5, 7, 7, 5, 6, 7, 5, 6, 7][:n]
    tokens = [torch.cat([torch.tensor([vocab - 1]), torch.randint(0, vocab - 1, (t - 1,), generator=gen)])
              for t in lengths]
    answers = torch.arange(4)
    correct = answers[torch.randint(0, 4, (n,), generator=gen)]
    incorrect = (correct + 1) % 4
    frame = pd.DataFrame({"prompt": [f"p{i}" for i in range(n)], "correct_id": correct.numpy(),
                          "incorrect_id": incorrect.numpy()})
    return Task(frame=frame, tokens=tokens, correct_ids=correct, incorrect_ids=incorrect, answer_ids=answers,
                contrast=Contrast.random_other, prefix_len=1)


@pytest.mark.parametrize("normalization_type", ["LN", "LNPre"])
@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("mode", ["negative", "zero_ablate"])
def test_fused_tail_matches_reference_gelu_new(normalization_type, positions, mode):
    """The fused tail (one-pass layer_norm/gelu, SDPA) computes what the hooked TransformerLens forward does,
    with prompts of several lengths and chunks that split conditions and prompts."""
    subject = gelu_new_subject(normalization_type)
    task = random_task(subject.model.cfg.d_vocab)
    cfg = SteeringConfig(mode=mode, scale="unit", positions=positions, token_budget=20)
    scales = np.ones(subject.d_sae)
    conds = [Condition((3,), 4.0), Condition((5, 11), -3.0), Condition((40,), 8.0)]
    engine = SteeringEngine(subject, task, cfg, scales)
    assert engine.fused
    eng = engine.run(conds, progress=False)
    ref = reference_run(subject, task, cfg, scales, conds)
    np.testing.assert_allclose(eng["logit_diff"], ref["logit_diff"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(eng["prob"], ref["prob"], atol=1e-5, rtol=1e-4)
    base = reference_run(subject, task, SteeringConfig(mode="negative", positions=positions), scales,
                         [Condition((3,), 0.0)])["logit_diff"]
    assert np.abs(ref["logit_diff"] - base).max() > 1e-3  # the push changes the output


@pytest.mark.parametrize("positions", ["all", "last"])
def test_fused_and_transformer_lens_blocks_agree(tiny_subject, tiny_task, setup, positions):
    cfg = SteeringConfig(mode="negative", positions=positions)
    scales = np.ones(tiny_subject.d_sae)
    fused = SteeringEngine(tiny_subject, tiny_task, cfg, scales)
    plain = SteeringEngine(tiny_subject, tiny_task, cfg, scales)
    assert fused.fused
    plain._fused = None  # TransformerLens blocks with frozen KV-cache entries
    a, b = fused.run(setup.conditions, progress=False), plain.run(setup.conditions, progress=False)
    for name in ("logit_diff", "logit", "top10_entropy"):
        np.testing.assert_allclose(a[name], b[name], atol=2e-5, rtol=0)
    plain._kv_shortcut = False  # the generic path (every block on every recomputed position) as well
    np.testing.assert_allclose(plain.run(setup.conditions, progress=False)["logit_diff"], a["logit_diff"], atol=2e-5)


def test_unsupported_blocks_use_transformer_lens():
    from featsweep.engines.fused_tail import _fused_ok

    assert _fused_ok(gelu_new_subject().model)
    rms = gelu_new_subject().model
    rms.cfg.normalization_type = "RMS"
    assert not _fused_ok(rms)
    rotary = gelu_new_subject().model
    rotary.cfg.positional_embedding_type = "rotary"
    assert not _fused_ok(rotary)


def test_token_budget_sets_rows_and_does_not_change_results(tiny_subject, tiny_task, setup):
    from types import SimpleNamespace as NS

    from featsweep.engines.fused_tail import auto_token_budget, rows_per_chunk

    gpt2 = NS(d_model=768, d_mlp=3072)
    organism = NS(d_model=128, d_mlp=512)
    assert auto_token_budget(organism) > auto_token_budget(gpt2) >= 1024
    assert rows_per_chunk(SteeringConfig(batch_size=7), gpt2, 12) == 7  # an explicit row count wins
    assert rows_per_chunk(SteeringConfig(token_budget=1200), gpt2, 12) == 100
    assert rows_per_chunk(SteeringConfig(token_budget=1200), gpt2, 1) == 1200  # positions=last: one per row
    assert rows_per_chunk(SteeringConfig(), gpt2, 12) == auto_token_budget(gpt2) // 12
    scales = np.ones(tiny_subject.d_sae)
    outs = [SteeringEngine(tiny_subject, tiny_task, SteeringConfig(positions="non_bos", token_budget=tb), scales)
            .run(setup.conditions, progress=False)["logit_diff"] for tb in (5, 64, 100_000)]
    np.testing.assert_allclose(outs[0], outs[2], atol=2e-5)
    np.testing.assert_allclose(outs[1], outs[2], atol=2e-5)
    with pytest.raises(FeatsweepError, match="token_budget"):
        SteeringEngine(tiny_subject, tiny_task, SteeringConfig(token_budget=0), scales)


# ---- a modern architecture: rotary positions, RMSNorm, grouped-query attention, gated MLP (issue 14) ---------


def shared_prefix_task(vocab: int, prefix: int = 4, n: int = 9, seed: int = 0):
    """``random_task`` whose prompts start with the same ``prefix`` tokens (a few-shot prefix in miniature)."""
    from featsweep.stages.task import shared_prefix_len

    task = random_task(vocab, n, seed)
    head = torch.randint(0, vocab - 1, (prefix - 1,), generator=torch.Generator().manual_seed(seed + 1))
    task.tokens = [torch.cat([t[:1], head, t[1:]]) for t in task.tokens]
    task.prefix_len = shared_prefix_len(task.tokens)
    return task


@pytest.fixture(scope="module")
def llama():
    subject = llama_subject()
    task = shared_prefix_task(subject.model.cfg.d_vocab)
    gen_max = np.random.default_rng(2).uniform(0.5, 3.0, subject.d_sae)
    return SimpleNamespace(subject=subject, task=task, gen_max=gen_max, attrs=fake_attrs(subject, task),
                           means=mean_activations(subject, task))


@pytest.mark.parametrize("mode,scale,positions", list(itertools.product(MODES, SCALES, POSITIONS + ["non_prefix"])))
def test_engine_matches_reference_on_llama_blocks(llama, mode, scale, positions):
    """Rotary keys are cached unrotated and rotated with the query's offset, so the frozen clean keys/values
    and the last-block shortcut stay exact on Llama-style blocks: the fused Llama tail and TransformerLens's
    own blocks both equal the plain reference hook."""
    assert llama.task.prefix_len >= 4
    scales = steering_scales(scale, llama.subject.d_sae, llama.gen_max, llama.attrs)
    conds = [Condition((3,), 4.0), Condition((5, 11), -3.0), Condition((40, 3, 7), 2.0)]
    cfg = SteeringConfig(mode=mode, scale=scale, positions=positions, token_budget=24)
    engine = SteeringEngine(llama.subject, llama.task, cfg, scales, llama.means)
    assert engine.fused and engine._kv_shortcut
    assert_engine_matches_reference(llama.subject, llama.task, cfg, scales, conds, llama.means, engine=engine)
    engine._fused = None  # TransformerLens blocks with frozen key/value cache entries
    assert_engine_matches_reference(llama.subject, llama.task, cfg, scales, conds, llama.means, engine=engine)
