"""Attribution: the splice keeps logits, values agree with finite differences, aggregation/selection by hand."""

from __future__ import annotations

import resource
import time

import numpy as np
import pandas as pd
import pytest
import torch

from featsweep.stages.attribution import (
    Attributions,
    aggregated_matrix,
    attribution_matrix,
    attribution_stage,
    compute_attributions,
    select_features,
    spliced_logits,
)
from featsweep.config import AttributionConfig, TaskConfig
from featsweep.stages.task import load_task
from helpers import athlete_texts, make_word_tokenizer, tiny_subject_from


@pytest.fixture(scope="module")
def subject64():
    """A fresh tiny subject in float64, so finite differences are limited by truncation, not round-off."""
    subject = tiny_subject_from(athlete_texts(), seed=1)
    subject.model.to(torch.float64)
    subject.sae.to(torch.float64)
    task = load_task(TaskConfig(limit=8), subject.model, seed=0)
    return subject, task


def _plain_metric(model, hook_name, tokens, correct, incorrect, position=None, delta=None) -> float:
    """m = logit(correct) - logit(incorrect) at the last position, optionally adding ``delta`` to the hook
    activation at ``position``; a plain TransformerLens hook, independent of featsweep.stages.attribution."""

    def add(x, hook):
        x = x.clone()
        x[0, position] += delta
        return x

    hooks = [(hook_name, add)] if delta is not None else []
    with torch.no_grad():
        logits = model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0, -1]
    return float(logits[correct] - logits[incorrect])


def test_splice_with_error_term_keeps_logits(tiny_subject, tiny_task):
    idx, tokens = next(tiny_task.batches(8))
    with torch.no_grad():
        plain = tiny_subject.model(tokens)
        # without the error term the reconstruction would change the output (so the check below can fail)
        def recon_only(x, hook):
            return tiny_subject.sae.decode(tiny_subject.sae.encode(x))
        recon = tiny_subject.model.run_with_hooks(tokens, fwd_hooks=[(tiny_subject.hook_name, recon_only)])
    spliced = spliced_logits(tiny_subject, tokens)
    assert (recon - plain).abs().max() > 1e-3
    # float32 logits of magnitude ~1: x_hat = x up to one rounding of (decode + error) ~ 1e-7 relative
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=1e-5)


def test_attribution_matches_finite_differences(subject64):
    subject, task = subject64
    attrs = compute_attributions(subject, task, batch_size=4, progress=False)
    table = attrs.table
    assert len(table) > 0
    rng = np.random.default_rng(0)
    # the 4 largest |attributions| and 4 random active entries (mixed prompts and positions)
    picks = list(table["value"].abs().nlargest(4).index) + list(rng.choice(len(table), size=4, replace=False))
    W_dec = subject.sae.W_dec.detach()
    for row in table.loc[picks].itertuples():
        tokens = task.tokens[row.prompt]
        correct, incorrect = int(task.correct_ids[row.prompt]), int(task.incorrect_ids[row.prompt])
        step = row.activation * W_dec[row.feature]  # a_i * d_i
        eps = 1e-4
        plus = _plain_metric(subject.model, subject.hook_name, tokens, correct, incorrect, row.position, eps * step)
        minus = _plain_metric(subject.model, subject.hook_name, tokens, correct, incorrect, row.position, -eps * step)
        fd = (plus - minus) / (2 * eps)
        # Tolerance: float64 central differences have truncation error O(eps^2 |m'''|) ~ 1e-8 and round-off
        # ~ 1e-16 |m| / eps ~ 1e-12; the stored value and activation are float32 (relative 6e-8 each).
        # So 1e-5 relative + 1e-7 absolute is loose for a correct formula yet fails for any wrong factor/sign.
        assert row.value == pytest.approx(fd, rel=1e-5, abs=1e-7), (row, fd)
        # the stored activation is the SAE code at that token
        assert row.activation > 0


def test_resid_grad_is_grad_of_metric(subject64):
    subject, task = subject64
    attrs = compute_attributions(subject, task, batch_size=8, progress=False)
    rng = np.random.default_rng(1)
    for prompt in (0, 5):
        tokens = task.tokens[prompt]
        assert attrs.resid_grad[prompt].shape == (len(tokens), subject.model.cfg.d_model)
        position = int(rng.integers(len(tokens)))
        direction = torch.tensor(rng.normal(size=subject.model.cfg.d_model), dtype=torch.float64)
        correct, incorrect = int(task.correct_ids[prompt]), int(task.incorrect_ids[prompt])
        eps = 1e-4
        fd = (_plain_metric(subject.model, subject.hook_name, tokens, correct, incorrect, position, eps * direction)
              - _plain_metric(subject.model, subject.hook_name, tokens, correct, incorrect, position, -eps * direction)
              ) / (2 * eps)
        analytic = float(attrs.resid_grad[prompt][position] @ direction.numpy())
        assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-6)  # resid_grad is stored in float32


@pytest.fixture(scope="module")
def small_task(tiny_subject):
    return load_task(TaskConfig(limit=6), tiny_subject.model, seed=0)


def test_table_is_sparse_and_complete(tiny_subject, small_task):
    attrs = compute_attributions(tiny_subject, small_task, batch_size=4, progress=False)
    table = attrs.table
    assert list(table.dtypes) == [np.int32, np.int32, np.int32, np.float32, np.float32]
    assert (table["activation"] > 0).all()
    # independent list of active (prompt, position, feature) entries and activations from a plain cache
    expected = []
    for prompt, tokens in enumerate(small_task.tokens):
        _, cache = tiny_subject.model.run_with_cache(tokens[None], names_filter=tiny_subject.hook_name)
        acts = tiny_subject.sae.encode(cache[tiny_subject.hook_name])[0]
        for position, feature in torch.nonzero(acts > 0).tolist():
            expected.append((prompt, position, feature, float(acts[position, feature])))
    expected = pd.DataFrame(expected, columns=["prompt", "position", "feature", "activation"])
    assert len(table) == len(expected)
    np.testing.assert_array_equal(table[["prompt", "position", "feature"]].to_numpy(),
                                  expected[["prompt", "position", "feature"]].to_numpy())
    np.testing.assert_allclose(table["activation"], expected["activation"], rtol=1e-5, atol=1e-6)
    assert attrs.n_prompts == small_task.n and attrs.d_sae == tiny_subject.d_sae
    assert attrs.prefix_len == small_task.prefix_len


def _hand_attrs() -> Attributions:
    # 3 prompts; lengths 4, 5, 4; prefix_len 1 (position 0 is the shared prefix)
    rows = [
        # prompt, position, feature, value
        (0, 0, 7, 9.0),   # prefix only for feature 7 on prompt 0
        (0, 1, 3, 1.0), (0, 2, 3, -4.0), (0, 3, 3, 2.0),
        (0, 3, 5, 0.5),
        (1, 0, 3, 100.0), (1, 2, 3, 3.0), (1, 4, 3, 0.0),  # active but zero attribution at the final position
        (1, 4, 5, -1.0),
        (1, 0, 7, 1.0),
        (2, 1, 3, -2.0), (2, 3, 3, 1.0),
        (2, 0, 7, 2.0), (2, 2, 7, -3.0),
    ]
    table = pd.DataFrame(rows, columns=["prompt", "position", "feature", "value"]).astype(
        {"prompt": np.int32, "position": np.int32, "feature": np.int32, "value": np.float32})
    table["activation"] = np.float32(1.0)
    return Attributions(table=table, n_prompts=3, d_sae=10, prefix_len=1, lengths=np.array([4, 5, 4]))


@pytest.mark.parametrize("aggregation, exclude_prefix, expected", [
    ("final", True, {3: [2.0, 0.0, 1.0], 5: [0.5, -1.0, 0.0]}),
    ("sum", True, {3: [-1.0, 3.0, -1.0], 5: [0.5, -1.0, 0.0], 7: [0.0, 0.0, -3.0]}),
    ("sum", False, {3: [-1.0, 103.0, -1.0], 5: [0.5, -1.0, 0.0], 7: [9.0, 1.0, -1.0]}),
    ("max_abs", True, {3: [-4.0, 3.0, -2.0], 5: [0.5, -1.0, 0.0], 7: [0.0, 0.0, -3.0]}),
    ("max_abs", False, {3: [-4.0, 100.0, -2.0], 5: [0.5, -1.0, 0.0], 7: [9.0, 1.0, -3.0]}),
    # the blog's: last position with a non-zero value (prompt 1 feature 3 -> position 2, not the zero at 4)
    ("last_nonzero", True, {3: [2.0, 3.0, 1.0], 5: [0.5, -1.0, 0.0], 7: [0.0, 0.0, -3.0]}),
    ("last_nonzero", False, {3: [2.0, 3.0, 1.0], 5: [0.5, -1.0, 0.0], 7: [9.0, 1.0, -3.0]}),
])
def test_aggregation_and_prefix(aggregation, exclude_prefix, expected):
    matrix = aggregated_matrix(_hand_attrs(), aggregation, exclude_prefix)
    assert list(matrix.index) == [0, 1, 2]
    assert sorted(matrix.columns) == sorted(expected)
    for feature, values in expected.items():
        np.testing.assert_allclose(matrix[feature].to_numpy(), values)


def test_selection_modes():
    matrix = pd.DataFrame({1: [1.0, 2.0, 3.0, 4.0], 2: [0.0, 5.0, 5.0, 5.0], 3: [0.0, 0.0, 9.0, 0.0],
                           4: [-1.0, -1.0, -1.0, -1.5]})
    assert list(select_features(matrix, "all_nonzero").columns) == [1, 4]
    assert list(select_features(matrix, "min_fraction", min_fraction=0.75).columns) == [1, 2, 4]  # inclusive
    assert list(select_features(matrix, "min_fraction", min_fraction=0.76).columns) == [1, 4]
    assert list(select_features(matrix, "min_fraction", min_fraction=0.25).columns) == [1, 2, 3, 4]
    # mean |a|: 1 -> 2.5, 2 -> 3.75, 3 -> 2.25, 4 -> 1.125
    assert list(select_features(matrix, "topk", top_k=2).columns) == [1, 2]
    assert list(select_features(matrix, "topk", top_k=3).columns) == [1, 2, 3]
    cfg = AttributionConfig(aggregation="sum", exclude_prefix=True, selection="all_nonzero")
    assert list(attribution_matrix(_hand_attrs(), cfg).columns) == [3]


def test_stage_outputs(tiny_subject, small_task):
    cfg = AttributionConfig(batch_size=8, selection="min_fraction", min_fraction=0.5)
    out, result = attribution_stage(tiny_subject, small_task, cfg)
    attrs, matrix = out.attrs, out.matrix
    assert result.skip_reason is None
    logged = result.tables["tables/attributions.parquet"]
    assert {"prompt", "position", "feature", "value"} <= set(logged.columns)
    assert len(logged) == result.metrics["attribution.n_active_entries"]
    assert matrix.shape == (small_task.n, result.metrics["attribution.n_selected_features"])
    assert ((matrix != 0).mean(axis=0) >= 0.5).all()


def test_stage_no_feature_survives(tiny_subject, small_task):
    import copy

    subject = copy.copy(tiny_subject)
    subject.sae = copy.deepcopy(tiny_subject.sae)
    with torch.no_grad():
        subject.sae.b_enc.fill_(-1e3)  # nothing is ever active
    out, result = attribution_stage(subject, small_task, AttributionConfig(batch_size=8))
    attrs, matrix = out.attrs, out.matrix
    assert matrix.shape == (small_task.n, 0)
    assert len(attrs.table) == 0
    assert result.skip_reason and "attribution." in result.skip_reason
    assert result.metrics["attribution.n_selected_features"] == 0


@pytest.mark.slow
def test_gpt2_shape_is_memory_bounded():
    """Random GPT-2 small shape (12 layers, d_model 768, vocab 50257) with a 768 -> 24576 SAE, 5 prompts."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from featsweep.subjects.loading import KNOWN_SHAPES, Subject

    tokenizer = make_word_tokenizer(athlete_texts())
    cfg = HookedTransformerConfig(**KNOWN_SHAPES["gpt2-small"], device="cpu", seed=0)
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right").eval()
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=24576)).eval()
    with torch.no_grad():
        sae.W_dec.normal_()
        sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.fill_(-0.5)
    for p in list(model.parameters()) + list(sae.parameters()):
        p.requires_grad_(False)
    subject = Subject(model=model, sae=sae, hook_name="blocks.7.hook_resid_pre", layer=7, identity="gpt2-shape")
    task = load_task(TaskConfig(limit=5), model, seed=0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    start = time.perf_counter()
    attrs = compute_attributions(subject, task, batch_size=16, progress=False)
    seconds = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_tokens = int(task.lengths.sum())
    table = attrs.table
    assert (table["activation"] > 0).all()
    assert table["feature"].max() < 24576
    # sparse: only active entries; bounded: well under a dense float32 [tokens, 24576] per extra copy
    assert len(table) < n_tokens * 24576
    assert table.memory_usage(deep=True).sum() < 18 * n_tokens * 24576
    # peak RSS growth: model (~0.5 GB) is already loaded; one batch's dense code is tens of MB
    assert rss_after - rss_before < 1500, (rss_before, rss_after)
    print(f"gpt2-shape: {n_tokens} tokens, {len(table)} active entries, {seconds:.1f} s, "
          f"peak RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
