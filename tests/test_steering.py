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
from featsweep.steering import (Condition, SteeringEngine, mean_activations, reference_run, run_conditions,
                                steering_scales)
from featsweep.task import PERFORMANCE_COLUMNS, baseline_performance
from helpers import fake_attrs, resid_grads

ROOT = Path(__file__).resolve().parents[1]
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
    ref = reference_run(tiny_subject, tiny_task, cfg, scales, setup.conditions, setup.means)
    eng = SteeringEngine(tiny_subject, tiny_task, cfg, scales, setup.means).run(setup.conditions, progress=False)
    for name in PERFORMANCE_COLUMNS:
        assert eng[name].shape == (len(setup.conditions), tiny_task.n)
    np.testing.assert_allclose(eng["logit_diff"], ref["logit_diff"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(eng["logit"], ref["logit"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(eng["prob"], ref["prob"], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(eng["top10_entropy"], ref["top10_entropy"], atol=1e-4, rtol=0)
    assert np.abs(eng["rank"] - ref["rank"]).max() <= 1  # ties at float precision may swap one place
    # the comparison is not vacuous: the intervention changes the output
    base = baseline_performance(tiny_subject.model, tiny_task)["logit_diff"].to_numpy()
    assert np.abs(ref["logit_diff"] - base[None, :]).max() > 1e-3


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
    assert set(result) == {"speedup_all", "speedup_last", "engine_gflops", "matmul_peak_gflops"}
    assert all(v > 0 for v in result.values())
