"""H1's test of discreteness: the silhouette against scikit-learn, the continuum fit against a planted model, the
p-values against a brute-force count, and a reduced calibration (a circle is not discrete, planted groups are)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_samples

from featsweep.config import ClusteringConfig
from featsweep.hypotheses.h1 import h1_statistics
from featsweep.hypotheses import discreteness as d
from featsweep.stages.network import build_network


def _random_corr(n=30, seed=0):
    x = np.random.default_rng(seed).standard_normal((80, n))
    x[:, : n // 2] += np.random.default_rng(seed + 1).standard_normal((80, 1))
    return np.corrcoef(x, rowvar=False)


@pytest.mark.parametrize("kept", [[0, 1, 2], [0, 2]])
def test_silhouette_matches_scikit_learn_on_the_kept_clusters(kept):
    corr = _random_corr()
    membership = np.random.default_rng(3).integers(0, 4, size=len(corr))  # cluster 3 (and 1) left out
    inside = np.isin(membership, kept)
    dis = 1 - corr[np.ix_(inside, inside)]
    np.fill_diagonal(dis, 0)
    expected = silhouette_samples(dis, membership[inside], metric="precomputed").mean()
    assert d.silhouette(corr, membership, kept) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(d.silhouette(corr, membership, [0]))


def test_observed_silhouette_reads_the_partition_by_feature_label():
    corr = _random_corr(12)
    labels = [7, 3, 11, 40, 2, 9, 5, 8, 1, 30, 31, 32]
    partition = {f: k % 3 for k, f in enumerate(labels)}
    frame = pd.DataFrame(corr, index=labels, columns=labels)
    membership = np.array([k % 3 for k in range(12)])
    assert d.observed_silhouette(frame, partition, [0, 1, 2]) == pytest.approx(d.silhouette(corr, membership, [0, 1, 2]))


def _circle_model(n=60, width=0.08, amplitude=0.8, seed=0):
    """The exact correlation of a Gaussian-kernel continuum on a circle at known, evenly spaced places (in a
    shuffled feature order)."""
    places = np.random.default_rng(seed).permutation((np.arange(n) + 0.5) / n)
    chord2 = (2 * np.sin(np.pi * np.abs(places[:, None] - places[None, :])) / (2 * np.pi)) ** 2
    corr = amplitude ** 2 * np.exp(-chord2 / (2 * width ** 2))
    np.fill_diagonal(corr, 1.0)
    return places, corr


def test_the_fit_finds_a_planted_circle_its_width_and_amplitudes():
    places, corr = _circle_model()
    fits = {f.shape: f for f in d.fit_continua(corr)}
    circle = fits["circle"]
    assert circle.sse < 0.25 * min(fits["segment"].sse, fits["sheet"].sse)  # off only by the width grid
    assert 0.8 * 0.08 < circle.width < 1.25 * 0.08  # the grid's step is about 20%
    np.testing.assert_allclose(circle.amplitude, 0.8, atol=0.1)
    # the fitted circular order is the planted one, up to rotation and direction
    planted = np.argsort(places)
    rank = np.empty(len(places), int)
    rank[np.argsort(circle.coords[:, 0])] = np.arange(len(places))
    steps = np.diff(np.concatenate([rank[planted], rank[planted][:1]])) % len(places)
    assert set(steps) in ({1}, {len(places) - 1})


def test_the_chord_kernel_and_the_amplitude_fit_against_a_direct_calculation():
    coords = np.array([[0.0], [0.25], [0.5]])
    d2 = d.squared_distances("circle", coords)
    radius = 1 / (2 * np.pi)
    assert d2[0, 1] == pytest.approx(2 * radius ** 2) and d2[0, 2] == pytest.approx(4 * radius ** 2)
    assert d.squared_distances("segment", coords)[0, 2] == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    s = rng.uniform(0.3, 0.9, size=8)
    kernel = np.exp(-rng.uniform(size=(8, 8)))
    kernel = (kernel + kernel.T) / 2
    corr = s[:, None] * s[None, :] * kernel
    fitted, sse = d._amplitudes(corr, kernel, iters=200)
    np.testing.assert_allclose(fitted, s, atol=1e-4)
    assert sse < 1e-8


def test_draws_keep_each_feature_in_its_place_along_the_continuum():
    _, corr = _circle_model(n=40, width=0.06)
    circle = next(f for f in d.fit_continua(corr) if f.shape == "circle")
    x = d.draw_continuum(circle, 20000, np.random.default_rng(0))
    drawn = np.corrcoef(x, rowvar=False)
    order = np.argsort(circle.coords[:, 0])
    near = np.mean([drawn[order[k], order[k + 1]] for k in range(39)])
    far = np.mean([drawn[order[k], order[(k + 20) % 40]] for k in range(40)])
    assert near > 0.3 and abs(far) < 0.05
    np.testing.assert_allclose(np.diag(np.cov(x, rowvar=False)), 1.0, atol=0.05)
    again = d.draw_continuum(circle, 50, np.random.default_rng(0))
    np.testing.assert_array_equal(again, d.draw_continuum(circle, 50, np.random.default_rng(0)))  # seeded


def test_pvalues_against_a_brute_force_count():
    draws = np.array([0.1, 0.3, np.nan, 0.5, 0.3])
    assert d.continuum_pvalue(0.3, draws) == ((1 + 3) / (1 + 4), 4)
    null = pd.DataFrame({"shape": ["segment"] * 3 + ["circle"] * 3, "silhouette": [0.1, 0.2, 0.3, 0.5, 0.6, np.nan],
                         "F:a": [1.0, 5.0, 2.0, 3.0, 9.0, 1.0], "H:a": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]})
    fits = [d.Continuum(s, np.zeros((3, 1)), 0.1, np.ones(3), 0.0) for s in ("segment", "circle")]
    got = d.discreteness_metrics(0.25, null, fits)
    assert got["h1.continuum_segment.p"] == pytest.approx(2 / 4)
    assert got["h1.continuum_circle.p"] == pytest.approx(3 / 3) and got["h1.continuum_circle.n_valid"] == 2
    assert got["h1.continuum_p"] == pytest.approx(1.0)
    tests = pd.DataFrame({"metric": ["a"], "anova_F": [4.0], "kruskal_H": [0.5]})
    out = d.metric_pvalues(tests, null, ["a"]).iloc[0]
    # segment: 1 of 3 draws >= 4 -> 2/4; circle: 1 of 3 -> 2/4; the larger of the two
    assert out["continuum_null_p"] == pytest.approx(0.5) and out["continuum_kruskal_null_p"] == pytest.approx(1.0)
    assert out["n_continuum_null_valid"] == 3 and out["continuum_null_p_adj"] == pytest.approx(0.5)


# ---- a reduced calibration: the benchmark (benchmarks/h1_discreteness.py) at cheap sizes -------------------


def _circle_data(rng, n=60, prompts=200, width=0.05, signal=0.7):
    places = rng.uniform(size=n)
    centres = rng.uniform(size=50)
    gap = np.abs(places[:, None] - centres[None, :])
    field = rng.standard_normal((prompts, 50)) @ np.exp(-np.minimum(gap, 1 - gap) ** 2 / (2 * width ** 2)).T
    field = (field - field.mean(axis=0)) / field.std(axis=0)
    return np.sqrt(signal) * field + np.sqrt(1 - signal) * rng.standard_normal(field.shape)


def _groups_data(rng, sizes=(20, 15, 15, 10), prompts=200):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    load = rng.uniform(0.55, 0.75, size=len(labels))
    signal = load * rng.standard_normal((prompts, len(sizes)))[:, labels]
    return signal + np.sqrt(1 - load ** 2) * rng.standard_normal(signal.shape)


# 199 draws of each graph-aware null: the fewest at which 9 metrics can pass Bonferroni (9 / 200 < 0.05)
CHEAP = ClusteringConfig(threshold=0.3, min_cluster_size=6, n_null=199, n_rewire=199, n_bootstrap=4, n_continuum=29)


def _h1(values, seed):
    network = build_network(pd.DataFrame(values), CHEAP, seed, None, None)
    result = h1_statistics(network, CHEAP, seed, has_gen_max=False, progress=False)
    plt.close("all")
    return result


@pytest.mark.parametrize("seed", [0, 1])
def test_a_circle_is_not_discrete_and_planted_groups_are(seed):
    circle = _h1(_circle_data(np.random.default_rng([seed, 5])), seed)
    assert circle.metrics["h1.continuum_p"] >= 0.05
    # its arcs differ in smoothly varying metrics beyond both graph-aware nulls, but only discreteness fails:
    # the verdict names that criterion alone
    assert circle.tags["h1.verdict"] == "not_supported"
    assert circle.tags["h1.verdict_reason"].startswith("fails: discreteness") and ";" not in circle.tags["h1.verdict_reason"]
    groups = _h1(_groups_data(np.random.default_rng([seed, 6])), seed)
    assert groups.metrics["h1.continuum_p"] == pytest.approx(1 / 30)  # above every draw of every shape
    assert groups.metrics["h1.silhouette"] > max(groups.metrics[f"h1.continuum_{s}.silhouette_mean"] for s in d.SHAPES)
    assert groups.tags["h1.verdict"] == "supported", groups.tags["h1.verdict_reason"]
    table = groups.tables["tables/h1_tests.parquet"]
    assert {"continuum_null_p", "continuum_null_p_adj", "n_continuum_null_valid"} <= set(table.columns)
    assert len(groups.tables["tables/h1_continuum_null.parquet"]) == 3 * CHEAP.n_continuum


def test_the_continuum_null_is_seeded_and_the_same_on_two_processes():
    matrix = pd.DataFrame(_groups_data(np.random.default_rng(9), sizes=(10, 8, 8)))
    cfg = ClusteringConfig(threshold=0.3, min_cluster_size=5, n_continuum=4)
    network = build_network(matrix, cfg, 0, None, None)
    metrics = ["degree", "abs_corr", "std"]
    one, _ = d.continuum_null(matrix, cfg, 0, network.features, metrics, progress=False)
    two, _ = d.continuum_null(matrix, cfg, 0, network.features, metrics, progress=False, n_jobs=2)
    pd.testing.assert_frame_equal(one, two)
    assert one["F:degree"].notna().any() and set(one["shape"]) == set(d.SHAPES)


def test_the_calibration_benchmark_runs_and_reports_every_criterion(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "h1_discreteness.py"
    out = subprocess.run([sys.executable, str(script), "--repeats", "1", "--n-null", "0", "--n-bootstrap", "0",
                          "--n-continuum", "3", "--scenarios", "groups,circle_w0.08_s0.8"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["scenario"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])["scenarios"]}
    assert set(rows) == {"groups", "circle_w0.08_s0.8"}
    for row in rows.values():
        assert {"supported", "discrete", "metric", "metric_beyond_continua", "silhouette_median"} <= set(row)
        assert row["supported"] == 0.0  # the permutation and rewired nulls are off: inconclusive, never supported
