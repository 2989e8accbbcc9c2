"""H1's test of discreteness: are the clusters distinct groups, or cuts of a continuum?

Why a test is needed. Modularity carves any graph into groups, and a continuum -- features that tile a circle,
a segment or a sheet, their correlation decaying smoothly with distance along it (circular day/month features,
feature splitting, manifolds of related latents) -- is carved into arcs that are stable under resampling the
prompts and beat the permutation null (whose shuffled data have no geometry at all). Every property that varies
smoothly along the continuum then "differs across clusters" and beats the graph-aware nulls, which destroy the
geometry too. Brain-map statistics know this as spatial autocorrelation, answered by nulls that keep it (the
"spin test", Alexander-Bloch et al. 2018, NeuroImage 178; variogram-matched surrogates, Burt et al. 2020,
NeuroImage 220). Here the null must keep the continuum but have no groups.

**The continuum null** (a parametric bootstrap from the best continuum of each shape, ``clustering.n_continuum``
draws per shape). Each candidate continuum is fitted to the observed correlation ``R``:

1. *Positions.* Diffusion-map coordinates of the features (Coifman & Lafon 2006): the leading non-trivial
   eigenvectors ``psi_1, psi_2`` of the random-walk normalisation of ``W = max(R, 0)`` (zero diagonal). A
   continuum's features lie along a curve or surface in them (a circle: ``(cos t, sin t)``; a segment:
   ``psi_1`` monotone, spectral seriation of Atkins et al. 1998; a sheet: ``psi_1``, ``psi_2`` monotone in its
   two axes). Three shapes are fitted: **segment** (``x = rank(psi_1)``), **circle** (``t = rank(atan2)`` of
   the standardised pair) and **sheet** (``x = rank(psi_1)``, ``y = rank(psi_2)``), ranks scaled to [0, 1).
2. *Correlation.* ``R_ij ~ s_i s_j exp(-d_ij^2 / 2 w^2)`` for ``i != j``: a Gaussian kernel of the distance
   along the shape (the chord for the circle, so the kernel stays positive definite) times per-feature
   amplitudes ``s_i`` in [0, 0.98] (a feature's share of the shared signal: the marginal structure), fitted by
   least squares over a grid of widths ``w`` with damped fixed-point updates of ``s``.
3. *Draws.* Fresh positions drawn i.i.d. uniformly on the shape are dealt to the features in the order of
   their fitted positions (each coordinate by rank), so every feature keeps its place along the continuum, and
   ``n_prompts`` rows are drawn from ``N(0, C)``, ``C = S K S + diag(1 - s^2)``. Each draw is clustered by the
   run's own procedure (threshold, communities, size filter, optional re-clustering).

A continuum has no preferred places on it, so i.i.d. uniform positions are the continuum's own law, and a true
continuum's observed data are one more draw from (approximately) its fitted model. Distinct groups sit at a
few points of any fitted shape; the draws spread them along it, closing the gaps. (Positions fitted freely,
without the uniform redraw, would copy the groups into the null and the test would have no power.)

**The statistic** (``h1.silhouette``): the mean silhouette width (Rousseeuw 1987) of the features of the kept
clusters, with dissimilarity ``1 - r`` on the full correlation matrix: for each feature, ``(b - a) / max(a, b)``,
``a`` its mean dissimilarity to its own cluster's other features, ``b`` the smallest mean dissimilarity to
another kept cluster. A continuum always has features on the boundary between two arcs, as close to the
neighbouring arc as to their own (silhouette near 0); distinct groups have none. A gap statistic in the sense of
Tibshirani, Walther & Hastie (2001): the observed separation against a reference without clusters, here a
reference with the data's own shape.

``h1.continuum_p`` = the LARGEST over the three shapes of ``(1 + #{null >= observed}) / (1 + n_valid)``
(an intersection-union test: H1 must beat every continuum shape; draws with fewer than 2 kept clusters have no
statistic and are left out, as in the other nulls). The true shape need not be chosen, only be among the three;
the calibration table in docs/statistics.md (``benchmarks/h1_discreteness.py``) measures the level and the power.

**Per-metric tests that survive a gradient.** The same draws give every feature metric's ANOVA F and Kruskal H
across the draw's kept clusters: centralities and ``abs_corr`` recomputed on the draw's graph, the attribution
metrics staying with their feature, which keeps its place along the continuum. A metric that varies smoothly
along a continuum varies the same way in the draws, which cut the same continuum into arcs, so it passes only
when the observed clusters separate it more than cuts of the fitted continuum do: ``h1.<metric>.continuum_null_p``
(the largest over the shapes), Bonferroni over the metrics in ``continuum_null_p_adj``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg as sla

from featsweep.engines import graph as graph_engine
from featsweep.config import ClusteringConfig
from featsweep.hypotheses.rewired_null import graph_cluster_tests, run_draws

SHAPES = ("segment", "circle", "sheet")
MAX_AMPLITUDE = 0.98  # keeps every draw's covariance positive definite (noise share >= 1 - 0.98^2)
WIDTHS = np.geomspace(0.01, 2.0, 28)  # kernel widths tried, in units of the shape's length (circle: circumference)


@dataclass
class Continuum:
    """One fitted continuum: the features' fitted coordinates in [0, 1) (columns: 1 for segment and circle, 2 for
    the sheet), the kernel width, the amplitudes, and the least-squares misfit."""

    shape: str
    coords: np.ndarray
    width: float
    amplitude: np.ndarray
    sse: float


def silhouette(corr: np.ndarray, membership: np.ndarray, kept: list[int]) -> float:
    """Mean silhouette width of the features in the ``kept`` clusters, dissimilarity ``1 - corr`` (the other
    clusters are left out; clusters of one feature score 0, as in scikit-learn). NaN below 2 kept clusters."""
    membership = np.asarray(membership)
    inside = np.isin(membership, kept)
    if len(kept) < 2:
        return float("nan")
    labels, codes = np.unique(membership[inside], return_inverse=True)
    dis = 1.0 - np.asarray(corr, dtype=float)[np.ix_(inside, inside)]
    np.fill_diagonal(dis, 0.0)
    onehot = np.zeros((len(codes), len(labels)))
    onehot[np.arange(len(codes)), codes] = 1.0
    counts = onehot.sum(axis=0)
    sums = dis @ onehot  # feature x cluster: summed dissimilarity
    rows = np.arange(len(codes))
    own_n = counts[codes] - 1
    a = np.divide(sums[rows, codes], own_n, out=np.zeros(len(codes)), where=own_n > 0)
    other = sums / counts
    other[rows, codes] = np.inf
    b = other.min(axis=1)
    s = np.where(own_n > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def diffusion_coordinates(corr: np.ndarray, k: int = 2) -> np.ndarray:
    """The ``k`` leading non-trivial diffusion-map coordinates of ``W = max(corr, 0)`` (zero diagonal):
    eigenvectors of ``D^-1/2 W D^-1/2`` divided by ``sqrt(D)`` (the random-walk eigenvectors)."""
    w = np.clip(np.asarray(corr, dtype=float), 0.0, None)
    np.fill_diagonal(w, 0.0)
    degree = w.sum(axis=1) + 1e-12
    inv = 1.0 / np.sqrt(degree)
    values, vectors = sla.eigh(inv[:, None] * w * inv[None, :])
    order = np.argsort(values)[::-1][1:k + 1]  # skip the trivial (Perron) eigenvector
    psi = vectors[:, order] * inv[:, None]
    return (psi - psi.mean(axis=0)) / (psi.std(axis=0) + 1e-12)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1): (rank + 0.5) / n, ties broken by order (stable)."""
    order = np.argsort(x, kind="stable")
    out = np.empty(len(x))
    out[order] = (np.arange(len(x)) + 0.5) / len(x)
    return out


def fitted_coords(corr: np.ndarray) -> dict[str, np.ndarray]:
    """Each shape's coordinates of the features from the diffusion map (see the module docstring)."""
    psi = diffusion_coordinates(corr, 2)
    angle = np.arctan2(psi[:, 1], psi[:, 0])
    return {"segment": _ranks(psi[:, 0])[:, None], "circle": _ranks(angle)[:, None],
            "sheet": np.column_stack([_ranks(psi[:, 0]), _ranks(psi[:, 1])])}


def squared_distances(shape: str, coords: np.ndarray) -> np.ndarray:
    """Squared distances between positions on a shape (circle: the chord of a circle of circumference 1)."""
    if shape == "circle":
        angle = 2 * np.pi * coords[:, 0]
        points = np.column_stack([np.cos(angle), np.sin(angle)]) / (2 * np.pi)
    else:
        points = coords
    diff = points[:, None, :] - points[None, :, :]
    return (diff ** 2).sum(axis=-1)


def _amplitudes(corr: np.ndarray, kernel: np.ndarray, iters: int = 30) -> tuple[np.ndarray, float]:
    """Least squares of ``corr_ij ~ s_i s_j kernel_ij`` over ``i != j``, ``s`` in [0, MAX_AMPLITUDE], by
    damped simultaneous updates of each ``s_i`` given the others; returns ``s`` and the misfit."""
    off = ~np.eye(len(corr), dtype=bool)
    r, k = np.where(off, corr, 0.0), np.where(off, kernel, 0.0)
    s = np.clip(np.sqrt(np.clip(r.max(axis=1), 0, None)), 0.05, MAX_AMPLITUDE)
    for _ in range(iters):
        num = (r * k) @ s
        den = (k ** 2) @ (s ** 2) + 1e-12
        # the geometric mean of the old and the exact update damps the see-saw of simultaneous updates
        s = np.sqrt(s * np.clip(num / den, 0.0, MAX_AMPLITUDE))
    fit = s[:, None] * s[None, :] * k
    return s, float(((r - fit)[off] ** 2).sum())


def fit_continuum(corr: np.ndarray, shape: str, coords: np.ndarray) -> Continuum:
    """The Gaussian-kernel continuum of ``shape`` at ``coords`` that fits ``corr`` best (width on :data:`WIDTHS`)."""
    d2 = squared_distances(shape, coords)
    best = None
    for width in WIDTHS:
        s, sse = _amplitudes(corr, np.exp(-d2 / (2 * width ** 2)))
        if best is None or sse < best.sse:
            best = Continuum(shape, coords, float(width), s, sse)
    return best


def fit_continua(corr: np.ndarray) -> list[Continuum]:
    """The best continuum of every shape in :data:`SHAPES`."""
    corr = np.asarray(corr, dtype=float)
    return [fit_continuum(corr, shape, coords) for shape, coords in fitted_coords(corr).items()]


def draw_continuum(fit: Continuum, n_prompts: int, rng: np.random.Generator) -> np.ndarray:
    """One prompts x features matrix from the fitted continuum: fresh i.i.d. uniform positions on its shape,
    dealt to the features by the rank of their fitted coordinate (per axis), then rows from ``N(0, C)``."""
    coords = np.empty_like(fit.coords)
    for axis in range(fit.coords.shape[1]):
        fresh = np.sort(rng.uniform(size=len(coords)))
        coords[:, axis] = fresh[np.argsort(np.argsort(fit.coords[:, axis], kind="stable"), kind="stable")]
    s = fit.amplitude
    cov = s[:, None] * s[None, :] * np.exp(-squared_distances(fit.shape, coords) / (2 * fit.width ** 2))
    np.fill_diagonal(cov, 1.0)
    factor = np.linalg.cholesky(cov)
    return rng.standard_normal((n_prompts, len(s))) @ factor.T


def continuum_draw(values: np.ndarray, shape: str, draw: int, features: list[int], cfg: ClusteringConfig,
                   seed: int, table: pd.DataFrame | None = None, metrics: list[str] | None = None) -> dict:
    """Cluster one draw by the run's procedure; its separation (:func:`silhouette`) and, with ``table`` and
    ``metrics``, every metric's F and H across its kept clusters (``featsweep.h1``'s matched-null tests)."""

    metrics = metrics or []
    corr = graph_engine.correlate(values, cfg.method)
    i, j, r = graph_engine.threshold_edges(corr, cfg.threshold, cfg.edges)
    g = graph_engine.build(len(features), i, j, r, cfg.edges, full=bool(metrics))
    first = graph_engine.communities(g, cfg.algorithm, cfg.weighted, cfg.resolution, seed, features)
    membership, kept = graph_engine.kept_membership(g, first, cfg.min_cluster_size, cfg.recluster_kept,
                                                    cfg.algorithm, cfg.weighted, cfg.resolution, seed, features)
    row = {"shape": shape, "draw": draw, "n_kept": len(kept), "silhouette": silhouette(corr, membership, kept)}
    if metrics and table is not None:
        row.update(graph_cluster_tests(g, first, features, corr, features, table, metrics, cfg, seed))
    return row


def continuum_null(matrix: pd.DataFrame, cfg: ClusteringConfig, seed: int, table: pd.DataFrame | None = None,
                   metrics: list[str] | None = None, progress: bool = True, n_jobs: int = 1
                   ) -> tuple[pd.DataFrame, list[Continuum]]:
    """``clustering.n_continuum`` draws of every fitted continuum (:func:`fit_continua`), reclustered: one row
    per draw (``shape``, ``draw``, ``n_kept``, ``silhouette`` and, with ``table`` and ``metrics``, ``F:<metric>``,
    ``H:<metric>``). The draws are made here, in order, from one seeded generator per shape, so ``n_jobs``
    processes give the numbers of one."""

    values = matrix.to_numpy(dtype=float)
    features = [int(f) for f in matrix.columns]
    fits = fit_continua(graph_engine.correlate(values, cfg.method))
    n = cfg.n_continuum

    def tasks():
        for k, fit in enumerate(fits):
            rng = np.random.default_rng([seed, 4, k])
            for draw in range(n):
                yield (continuum_draw, draw_continuum(fit, len(values), rng), fit.shape, draw, features, cfg,
                       seed + draw, table, metrics)

    rows = run_draws(tasks(), n * len(fits), n_jobs, "H1 continuum null", progress)
    columns = ["shape", "draw", "n_kept", "silhouette", *[f"{k}:{m}" for k in "FH" for m in (metrics or [])]]
    return pd.DataFrame(rows, columns=columns), fits


def continuum_pvalue(observed: float, draws: np.ndarray) -> tuple[float, int]:
    """``(1 + #{draw >= observed}) / (1 + n_valid)`` over the finite draws, and ``n_valid``."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if not (len(draws) and np.isfinite(observed)):
        return float("nan"), len(draws)
    return (1 + int(np.sum(draws >= observed))) / (1 + len(draws)), len(draws)


def discreteness_metrics(observed: float, null: pd.DataFrame, fits: list[Continuum]) -> dict[str, float]:
    """The logged figures: ``h1.silhouette``, per shape its p, null mean, valid draws and fitted width, and
    ``h1.continuum_p`` = the largest p over the shapes (NaN when a shape has no valid draw)."""
    out = {"h1.silhouette": float(observed)}
    pvalues = []
    for fit in fits:
        draws = null.loc[null["shape"] == fit.shape, "silhouette"].to_numpy(dtype=float)
        p, n_valid = continuum_pvalue(observed, draws)
        pvalues.append(p)
        out.update({f"h1.continuum_{fit.shape}.p": p, f"h1.continuum_{fit.shape}.n_valid": float(n_valid),
                    f"h1.continuum_{fit.shape}.silhouette_mean": float(np.nanmean(draws)) if n_valid else np.nan,
                    f"h1.continuum_{fit.shape}.width": fit.width})
    out["h1.continuum_p"] = float(max(pvalues)) if pvalues and np.all(np.isfinite(pvalues)) else np.nan
    return out


def metric_pvalues(tests: pd.DataFrame, null: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Add ``continuum_null_p``, ``continuum_kruskal_null_p``, ``n_continuum_null_valid`` (the fewest over the
    shapes) and ``continuum_null_p_adj`` (Bonferroni over the metrics) to the cluster-test table: per metric the
    largest over the shapes of the p of the observed F (H) against the draws' F (H)."""
    from featsweep.hypotheses.stats import adjust_pvalues

    out = tests.copy()
    shapes = list(dict.fromkeys(null["shape"]))
    for stat, column, name in (("F", "anova_F", "continuum_null_p"), ("H", "kruskal_H", "continuum_kruskal_null_p")):
        values, valid = [], []
        for metric, observed in zip(out["metric"], out[column]):
            per_shape = [continuum_pvalue(observed, null.loc[null["shape"] == shape, f"{stat}:{metric}"])
                         if f"{stat}:{metric}" in null else (np.nan, 0) for shape in shapes]
            ps = [p for p, _ in per_shape]
            values.append(max(ps) if ps and np.all(np.isfinite(ps)) else np.nan)
            valid.append(float(min((n for _, n in per_shape), default=0)))
        out[name] = values
        if stat == "F":
            out["n_continuum_null_valid"] = valid
    out["continuum_null_p_adj"] = adjust_pvalues(out["continuum_null_p"].to_numpy(), "bonferroni")
    return out


def observed_silhouette(corr: pd.DataFrame, partition: dict[int, int], kept: list[int]) -> float:
    """:func:`silhouette` of the network's own partition (``corr``: features x features, labelled)."""
    membership = np.array([partition.get(int(f), -1) for f in corr.columns])
    return silhouette(corr.to_numpy(dtype=float), membership, kept)
