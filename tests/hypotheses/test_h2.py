"""H2 at the unit of the set: the stratified label-permutation test against exact enumeration, and the random
control sampling."""

from __future__ import annotations

from itertools import combinations, product

import numpy as np
import pytest

from featsweep.stages.steering import sample_sets
from featsweep.hypotheses.stats import permutation_diff

CLUSTERS = {0: list(range(0, 6)), 1: list(range(10, 16)), 2: list(range(20, 25))}


def _exact_p(values, is_a, strata):
    """Two-sided p over EVERY relabelling within strata (brute force)."""
    blocks = [(values[strata == s], int(is_a[strata == s].sum())) for s in np.unique(strata)]

    def stat(choice):
        diffs = []
        for (v, _), a_idx in zip(blocks, choice):
            mask = np.zeros(len(v), bool)
            mask[list(a_idx)] = True
            diffs.append(v[mask].mean() - v[~mask].mean())
        return np.mean(diffs)

    observed = stat([np.flatnonzero(is_a[strata == s]) for s in np.unique(strata)])
    all_stats = [stat(c) for c in product(*[combinations(range(len(v)), k) for v, k in blocks])]
    return observed, np.mean(np.abs(all_stats) >= abs(observed) - 1e-12)


def test_permutation_diff_matches_exact_enumeration():
    rng = np.random.default_rng(0)
    strata = np.repeat([2, 3], [8, 7])
    is_a = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0], bool)
    values = rng.normal(size=15) - 0.8 * is_a
    observed, exact = _exact_p(values, is_a, strata)
    got = permutation_diff(values, is_a, strata, n_permutations=20000, seed=1)
    assert got["diff"] == pytest.approx(observed)
    assert got["p"] == pytest.approx(exact, abs=0.01)  # Monte Carlo error of 20000 draws is ~0.003
    assert permutation_diff(values, is_a, strata, 500, seed=3) == permutation_diff(values, is_a, strata, 500, seed=3)


def test_permutation_diff_needs_two_per_group():
    got = permutation_diff([0.1, 0.2, 0.3], [True, False, False], [2, 2, 2], 100, 0)
    assert np.isnan(got["p"]) and np.isnan(got["diff"])


def test_permutation_diff_is_calibrated_on_exchangeable_data():
    rng = np.random.default_rng(5)
    ps = [permutation_diff(rng.normal(size=24), np.arange(24) % 2 == 0, np.repeat([2, 3, 4], 8), 199, k)["p"]
          for k in range(200)]
    assert 0.02 <= np.mean(np.array(ps) < 0.05) <= 0.09


def test_random_sets_are_uniform_over_all_kept_features():
    sets = sample_sets(CLUSTERS, [2, 4], 400, ["random"], np.random.default_rng(0))
    pool = {f for fs in CLUSTERS.values() for f in fs}
    assert all(s["sampling"] == "random" and len(set(s["features"])) == s["size"] for s in sets)
    assert all(set(s["features"]) <= pool for s in sets)
    counts = np.bincount([f for s in sets if s["size"] == 4 for f in s["features"]], minlength=25)[sorted(pool)]
    expected = 400 * 4 / len(pool)
    assert np.abs(counts - expected).max() < 4 * np.sqrt(expected)  # every feature about equally often
    owner = {f: c for c, fs in CLUSTERS.items() for f in fs}
    assert all(s["clusters"] == tuple(sorted({owner[f] for f in s["features"]})) for s in sets)
