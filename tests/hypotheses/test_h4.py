"""H4: the statistic and its permutation p-value against direct loops, the density bins, the AMI against
sklearn, a planted positive and a shuffled negative, and the verdict rule."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import sparse
from sklearn.metrics import adjusted_mutual_info_score

from featsweep.hypotheses.h4 import (density_bins, h4_statistics, matched_null, permutation_null, statistic,
                                     upper_p)
from featsweep.engines.cooccurrence import Counts, dense_weights
from featsweep.hypotheses.verdicts import h4_verdict


def counts_from(codes: np.ndarray) -> Counts:
    return Counts(codes=sparse.csc_matrix(codes.astype(np.int32)), n_tokens=len(codes))


def planted(seed: int = 0, n_units: int = 800, d: int = 60):
    """Latents 0-7 and 8-15 are two families that co-fire; the rest fire independently at matched rates."""
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.02, 0.08, d)
    codes = (rng.random((n_units, d)) < rate).astype(np.int64)
    for family in (range(0, 8), range(8, 16)):
        on = rng.random(n_units) < 0.06
        codes[np.ix_(on, list(family))] |= (rng.random((on.sum(), 8)) < 0.7)
    return counts_from(codes)


def network_of(partition: dict[int, int], kept: list[int]):
    return SimpleNamespace(partition=partition, kept_clusters=kept)


def direct_statistic(values: np.ndarray, labels: np.ndarray) -> float:
    within, between = [], []
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            (within if labels[a] == labels[b] else between).append(values[a, b])
    return float(np.mean(within) - np.mean(between))


def test_statistic_and_permutation_null_match_direct_loops():
    rng = np.random.default_rng(1)
    values = rng.random((12, 12))
    values = (values + values.T) / 2
    labels = np.array([0] * 5 + [1] * 4 + [2] * 3)
    assert statistic(values, labels) == pytest.approx(direct_statistic(values, labels))
    null = permutation_null(values, labels, 30, seed=7)
    again = np.random.default_rng(7)  # the same stream, by loops
    _, codes = np.unique(labels, return_inverse=True)
    expected = [direct_statistic(values, again.permutation(codes)) for _ in range(30)]
    np.testing.assert_allclose(null, expected)
    assert upper_p(0.5, np.array([0.1, 0.6, 0.5, 0.2])) == pytest.approx((1 + 2) / 5)


def test_density_bins_are_quantiles_of_log_firing_counts():
    counts = np.array([0, 1, 2, 4, 8, 16, 32, 64, 0, 128])
    bins = density_bins(counts, 4)
    assert bins[0] == bins[8] == -1
    fired = bins[counts > 0]
    assert np.all(np.diff(fired[np.argsort(counts[counts > 0])]) >= 0) and set(fired) == {0, 1, 2, 3}


def test_matched_sets_draw_from_the_same_density_bins():
    counts = planted()
    latents = np.arange(16)
    labels = np.repeat([0, 1], 8)
    null = matched_null(counts, latents, labels, "jaccard", 20, 5, seed=0)
    assert null.shape == (20,) and np.isfinite(null).all()
    assert np.all(null < statistic(dense_weights(counts, latents, "jaccard"), labels))  # random latents: no families


def test_planted_families_support_h4_and_the_ami_matches_sklearn():
    counts = planted()
    partition = {f: 0 if f < 8 else 1 for f in range(16)} | {40: 2}  # cluster 2 is not kept
    community = np.full(60, -1)
    community[:8], community[8:12] = 0, 1  # 12-15 have no dictionary edge: singletons
    result = h4_statistics(network_of(partition, [0, 1]), counts, community, "jaccard", 200, 200, 5, seed=0)
    m = result.metrics
    assert m["h4.n_features"] == 16 and m["h4.statistic"] > 0
    assert m["h4.perm_p"] == pytest.approx(1 / 201) and m["h4.matched_p"] == pytest.approx(1 / 201)
    expected_ami = adjusted_mutual_info_score(np.repeat([0, 1], 8), [0] * 8 + [1] * 4 + [-13, -14, -15, -16])
    assert m["h4.ami"] == pytest.approx(expected_ami)
    assert m["h4.n_features_in_communities"] == 12
    assert result.tags["h4.verdict"] == "supported"
    assert len(result.tables["tables/h4_null.parquet"]) == 400


def test_labels_unrelated_to_cooccurrence_are_not_supported():
    counts = planted()
    rng = np.random.default_rng(3)
    latents = rng.choice(np.arange(16, 60), 16, replace=False)  # independent latents, arbitrary clusters
    partition = dict(zip(latents.tolist(), np.repeat([0, 1], 8).tolist()))
    result = h4_statistics(network_of(partition, [0, 1]), counts, np.full(60, -1), "phi", 200, 200, 5, seed=0)
    assert result.metrics["h4.perm_p"] > 0.05 and result.tags["h4.verdict"] != "supported"


def test_fewer_than_two_kept_clusters_is_inconclusive():
    result = h4_statistics(network_of({1: 0, 2: 0, 3: 1}, [0]), planted(), None, "jaccard", 10, 10, 5, seed=0)
    assert result.tags["h4.verdict"] == "inconclusive" and "h4.statistic" not in result.metrics


BASE = {"h4.statistic": 0.05, "h4.perm_p": 0.001, "h4.matched_p": 0.002, "h4.perm_n": 1000, "h4.matched_n": 1000}


@pytest.mark.parametrize("change,verdict,why", [
    ({}, "supported", "statistic"),
    ({"h4.matched_p": 0.2}, "inconclusive", "density-matched latents p=0.2"),
    ({"h4.perm_p": 0.3, "h4.matched_p": 0.2}, "not_supported", "label permutation p=0.3"),
    ({"h4.statistic": -0.05}, "not_supported", "statistic=-0.05"),
    ({"h4.matched_p": float("nan")}, "inconclusive", "not run: cooccurrence.n_matched"),
    ({"h4.perm_n": 10}, "inconclusive", "too few null draws"),
])
def test_verdict_rule(change, verdict, why):
    got, reason = h4_verdict({**BASE, **change}, n_kept=2)
    assert got == verdict and why in reason
    assert h4_verdict(BASE, n_kept=1)[0] == "inconclusive"
