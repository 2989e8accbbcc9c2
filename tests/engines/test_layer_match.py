"""Decoder matching across layers against brute force and against known permutations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from featsweep.engines import layer_match as lm
from featsweep.errors import FeatsweepError


def _decoder(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d)) * np.random.default_rng(seed + 1).uniform(0.2, 3, (n, 1))


def test_cosine_matrix_against_a_loop():
    a, b = _decoder(7, 5, 0), _decoder(9, 5, 1)
    cos = lm.cosine_matrix(a, b)
    for i in range(7):
        for j in range(9):
            assert cos[i, j] == pytest.approx(a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]), abs=1e-12)
    assert lm.cosine_matrix(np.zeros((2, 5)), b).max() == 0  # a zero (dead) row matches nothing


@pytest.mark.parametrize("k", [1, 3])
def test_top_k_against_brute_force(k):
    a, b = _decoder(12, 6, 2), _decoder(20, 6, 3)
    idx, val = lm.top_k(lm.cosine_matrix(a, b), k)
    for i in range(12):
        cos = [a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]) for j in range(20)]
        best = sorted(range(20), key=lambda j: -cos[j])[:k]
        assert idx[i].tolist() == best
        np.testing.assert_allclose(val[i], [cos[j] for j in best], atol=1e-12)


def test_top_k_ties_go_to_the_lower_index_and_bad_k_is_one_line():
    cos = np.array([[0.5, 0.9, 0.9, 0.1]])
    assert lm.top_k(cos, 2)[0].tolist() == [[1, 2]]
    with pytest.raises(FeatsweepError, match="1 <= k <= 4"):
        lm.top_k(cos, 5)


@pytest.mark.parametrize("noise", [0.0, 0.05, 0.2])
def test_a_permuted_rescaled_noisy_copy_is_recovered(noise):
    rng = np.random.default_rng(4)
    a = _decoder(64, 32, 5)
    perm = rng.permutation(64)
    b = a[perm] * rng.uniform(0.5, 2.0, (64, 1)) + noise * rng.normal(size=(64, 32)) * np.linalg.norm(a[perm], axis=1, keepdims=True) / np.sqrt(32)
    inverse = np.argsort(perm)  # latent i of A sits at row inverse[i] of B
    rows, cols, cos = lm.assign(a, b)
    assert rows.tolist() == list(range(64)) and cols.tolist() == inverse.tolist()
    assert lm.top_k(lm.cosine_matrix(a, b), 1)[0][:, 0].tolist() == inverse.tolist()
    assert cos.min() > (0.99 if noise == 0.0 else 0.8 if noise == 0.05 else 0.5)


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
@pytest.mark.parametrize("seed", range(4))
def test_assignment_is_optimal_against_every_permutation(shape, seed):
    n_a, n_b = shape
    a, b = _decoder(n_a, 4, 10 + seed), _decoder(n_b, 4, 20 + seed)
    cos = lm.cosine_matrix(a, b)
    rows, cols, values = lm.assign(a, b)
    m = min(n_a, n_b)
    assert len(rows) == m and len(set(cols)) == m
    np.testing.assert_allclose(values, cos[rows, cols])
    if n_a <= n_b:
        best = max(sum(cos[i, p[i]] for i in range(n_a)) for p in itertools.permutations(range(n_b), n_a))
    else:
        best = max(sum(cos[p[j], j] for j in range(n_b)) for p in itertools.permutations(range(n_a), n_b))
    assert values.sum() == pytest.approx(best, abs=1e-12)
    # the MSE objective on folded rows (SAE Match) against brute force too
    theta_a, theta_b = np.random.default_rng(seed).uniform(0.5, 2, n_a), np.random.default_rng(seed + 9).uniform(0.5, 2, n_b)
    fa, fb = lm.folded_decoder(a, theta_a), lm.folded_decoder(b, theta_b)
    _, _, dist = lm.assign(fa, fb, objective="mse")
    if n_a <= n_b:
        brute = min(sum(np.sum((fa[i] - fb[p[i]]) ** 2) for i in range(n_a)) for p in itertools.permutations(range(n_b), n_a))
    else:
        brute = min(sum(np.sum((fa[p[j]] - fb[j]) ** 2) for j in range(n_b)) for p in itertools.permutations(range(n_a), n_b))
    assert dist.sum() == pytest.approx(brute, rel=1e-10)


def test_folding_scales_rows_and_mse_on_unit_rows_is_the_cosine_assignment():
    a, b = _decoder(6, 5, 30), _decoder(6, 5, 31)
    np.testing.assert_allclose(lm.folded_decoder(a, np.arange(6.0)), a * np.arange(6.0)[:, None])
    assert lm.assign(lm.unit_rows(a), lm.unit_rows(b), "mse")[1].tolist() == lm.assign(a, b)[1].tolist()


def test_decoders_of_different_residual_streams_give_one_line():
    with pytest.raises(FeatsweepError, match="d_in=5.*d_in=6.*Match SAEs of one model"):
        lm.cosine_matrix(_decoder(3, 5, 0), _decoder(3, 6, 0))
    with pytest.raises(FeatsweepError, match="cosine or mse"):
        lm.assign(_decoder(3, 5, 0), _decoder(3, 5, 1), objective="l1")


def test_random_rotation_is_orthogonal_seeded_and_keeps_cosines_within_a_dictionary():
    q = lm.random_rotation(16, 3)
    np.testing.assert_allclose(q @ q.T, np.eye(16), atol=1e-12)
    np.testing.assert_array_equal(q, lm.random_rotation(16, 3))
    b = _decoder(10, 16, 7)
    np.testing.assert_allclose(lm.cosine_matrix(b @ q, b @ q), lm.cosine_matrix(b, b), atol=1e-12)
