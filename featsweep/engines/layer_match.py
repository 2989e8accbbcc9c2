"""Matching SAE latents across layers by their decoder directions (pure functions on decoder matrices).

Two SAEs of one model, read at layers L and L', each write latent i as a direction ``W_dec[i]`` of the
residual stream. A latent that the model carries from L to L' keeps (nearly) its direction, so:

* **top-1 / top-k matches** ("Analyze Feature Flow", Laptev et al. 2025): for each latent of A, the latents
  of B with the largest cosine between unit-norm decoder rows;
* **one-to-one assignment** ("SAE Match", Balagansky et al. 2025): the permutation (a partial one when the
  widths differ) that maximizes the summed cosine, by the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``). SAE Match scores a pair by the squared distance of decoder rows
  with each JumpReLU threshold folded in (``W_dec[i] * threshold[i]``, the smallest vector the latent can write),
  ``objective="mse"`` with :func:`folded_decoder`; on unit rows that is the cosine objective.

Every function takes numpy arrays ``[n_latents, d_model]`` and is deterministic (ties: the lower index).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

from featsweep.errors import FeatsweepError


def unit_rows(W: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; a zero row stays zero (cosine 0 with everything)."""
    W = np.asarray(W, dtype=np.float64)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    return np.divide(W, norms, out=np.zeros_like(W), where=norms > 0)


def check_comparable(W_a: np.ndarray, W_b: np.ndarray, what_a: str = "A", what_b: str = "B") -> None:
    """Both decoders must write the same residual stream (same d_model) to be compared."""
    if np.ndim(W_a) != 2 or np.ndim(W_b) != 2:
        raise FeatsweepError(f"Decoders must be 2-D [n_latents, d_model]; got {np.shape(W_a)} and {np.shape(W_b)}.")
    if W_a.shape[1] != W_b.shape[1]:
        raise FeatsweepError(f"Cannot match SAE {what_a} (d_in={W_a.shape[1]}) with SAE {what_b} (d_in={W_b.shape[1]}): "
                             "their decoders write different residual streams. Match SAEs of one model.")


def cosine_matrix(W_a: np.ndarray, W_b: np.ndarray) -> np.ndarray:
    """[n_a, n_b] cosine between every decoder row of A and of B."""
    check_comparable(W_a, W_b)
    return unit_rows(W_a) @ unit_rows(W_b).T


def top_k(cos: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``cos`` the ``k`` columns of largest value, best first (ties: lower column):
    (indices [n_a, k], values [n_a, k])."""
    if not 1 <= k <= cos.shape[1]:
        raise FeatsweepError(f"top-k matching needs 1 <= k <= {cos.shape[1]} (the latents of B); got k={k}.")
    # a stable sort of -cos keeps the lower column first among equal values
    order = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(cos, order, axis=1)


def folded_decoder(W_dec: np.ndarray, threshold: Optional[np.ndarray] = None) -> np.ndarray:
    """SAE Match's folding: each decoder row times its JumpReLU threshold (the encoder is divided by it, so the
    SAE is unchanged); without thresholds the rows as they are."""
    W = np.asarray(W_dec, dtype=np.float64)
    return W if threshold is None else W * np.asarray(threshold, dtype=np.float64)[:, None]


def squared_distances(W_a: np.ndarray, W_b: np.ndarray) -> np.ndarray:
    """[n_a, n_b] squared Euclidean distance between decoder rows."""
    check_comparable(W_a, W_b)
    a, b = np.asarray(W_a, np.float64), np.asarray(W_b, np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def assign(W_a: np.ndarray, W_b: np.ndarray, objective: str = "cosine") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of A's latents to B's: (rows, cols, score) with ``rows`` ascending.

    ``cosine`` maximizes the summed cosine of unit decoder rows (score: each pair's cosine); ``mse`` minimizes
    the summed squared distance of the rows as given (score: each pair's distance; pass folded rows).
    With different widths, min(n_a, n_b) pairs."""
    if objective == "cosine":
        score = cosine_matrix(W_a, W_b)
        rows, cols = linear_sum_assignment(score, maximize=True)
    elif objective == "mse":
        score = squared_distances(W_a, W_b)
        rows, cols = linear_sum_assignment(score)
    else:
        raise FeatsweepError(f"Unknown matching objective '{objective}': use cosine or mse.")
    return rows, cols, score[rows, cols]


def assign_cosine(cos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one-to-one assignment on an already computed cosine (sub)matrix: (rows, cols, cosine)."""
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return rows, cols, cos[rows, cols]


def random_rotation(d: int, seed: int) -> np.ndarray:
    """A uniformly random orthogonal [d, d] matrix (QR of a Gaussian with the sign fix), seeded."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))[None, :]
