"""H4: the task's clusters are co-occurrence families of the model's ordinary text.

The task network clusters features by how their *attributions* co-vary across the task's prompts; the
dictionary graph groups latents by how often they *fire together* on a corpus. H4 asks whether the first
partition follows the second.

* **Statistic** (``h4.statistic``): over the kept features of the task network (the features of the kept
  clusters), the mean corpus co-occurrence (``cooccurrence.measure``, every pair exactly, co-fired or not) of
  the pairs in the same cluster minus the mean of the pairs in different clusters (``h4.within_mean`` and
  ``h4.between_mean``).
* **Label permutation** (``h4.perm_p``): the cluster labels shuffled among the kept features
  (``cooccurrence.n_permutations`` times, sizes kept); one-sided, ``p = (1 + #{null >= observed}) / (1 + n)``.
  Controls for which features were kept, not for how their firing densities fall across the clusters.
* **Density-matched latents** (``h4.matched_p``): each kept feature replaced by a random latent from the same
  firing-density bin (``cooccurrence.density_bins`` quantile bins of log density over the latents that fire),
  keeping its cluster label; the statistic recomputed on those latents (``cooccurrence.n_matched`` draws, same
  one-sided p). Controls for dense features co-occurring with everything: clusters that differ only in firing
  density give a within-minus-between gap by density alone, and the matched latents give it too.
* **Agreement** (``h4.ami``): the adjusted mutual information (sklearn) between the task's cluster labels and
  the dictionary communities of the same kept features; a latent without a dictionary edge is its own
  singleton community. Descriptive: the verdict does not use it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_mutual_info_score

from featsweep.results import Network, StageResult
from featsweep.engines.cooccurrence import Counts, dense_weights
from featsweep.hypotheses.verdicts import h4_verdict


def within_between(values: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean of ``values`` (symmetric, diagonal ignored) over same-label pairs and over different-label pairs."""
    labels = np.asarray(labels)
    iu = np.triu_indices(len(labels), 1)
    same = labels[iu[0]] == labels[iu[1]]
    pairs = values[iu]
    return (float(pairs[same].mean()) if same.any() else float("nan"),
            float(pairs[~same].mean()) if (~same).any() else float("nan"))


def statistic(values: np.ndarray, labels: np.ndarray) -> float:
    within, between = within_between(values, labels)
    return within - between


def permutation_null(values: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The statistic under ``n`` seeded shuffles of ``labels`` (vectorised: pair sums from one-hot codes)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    _, codes = np.unique(labels, return_inverse=True)
    k = len(labels)
    w = np.nan_to_num(values, nan=0.0)
    np.fill_diagonal(w, 0.0)
    total = w.sum() / 2
    n_pairs = k * (k - 1) / 2
    n_same = float(sum(c * (c - 1) / 2 for c in np.bincount(codes)))
    out = np.empty(n)
    onehot = np.eye(codes.max() + 1)
    for d in range(n):
        h = onehot[rng.permutation(codes)]  # [k, clusters]
        within = float(np.einsum("ic,ij,jc->", h, w, h)) / 2
        out[d] = within / n_same - (total - within) / (n_pairs - n_same)
    return out


def density_bins(per_latent: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each latent by quantiles of its log firing count among the latents that fire (-1: never fires)."""
    fires = per_latent > 0
    bins = np.full(len(per_latent), -1, np.int64)
    if fires.any():
        logs = np.log(per_latent[fires].astype(float))
        edges = np.unique(np.quantile(logs, np.linspace(0, 1, n_bins + 1))[1:-1])
        bins[fires] = np.searchsorted(edges, logs, side="right")
    return bins


def matched_null(counts: Counts, latents: np.ndarray, labels: np.ndarray, measure, n: int, n_bins: int, seed: int
                 ) -> np.ndarray:
    """The statistic on ``n`` random latent sets, each latent drawn from the density bin of the feature it
    replaces (without repeats within a set where the bin allows)."""
    rng = np.random.default_rng(seed)
    bins = density_bins(counts.per_latent, n_bins)
    pools = {b: np.flatnonzero(bins == b) for b in np.unique(bins[latents])}
    out = np.empty(n)
    for d in range(n):
        drawn = np.empty(len(latents), np.int64)
        for b, pool in pools.items():
            where = np.flatnonzero(bins[latents] == b)
            drawn[where] = rng.choice(pool, size=len(where), replace=len(where) > len(pool))
        out[d] = statistic(dense_weights(counts, drawn, measure), labels)
    return out


def upper_p(observed: float, null: np.ndarray) -> float:
    null = null[np.isfinite(null)]
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null))) if len(null) else float("nan")


def h4_statistics(network: Network, counts: Counts, community: Optional[np.ndarray], measure, n_permutations: int,
                  n_matched: int, n_bins: int, seed: int) -> StageResult:
    """H4's metrics, the null draws as a table, and the verdict tags."""
    result = StageResult()
    kept = list(network.kept_clusters)
    latents = np.array(sorted(f for f, c in network.partition.items() if c in kept), dtype=np.int64)
    labels = np.array([network.partition[int(f)] for f in latents])
    m = result.metrics
    m["h4.n_features"] = float(len(latents))
    if len(kept) >= 2:
        values = dense_weights(counts, latents, measure)
        within, between = within_between(values, labels)
        observed = within - between
        m.update({"h4.within_mean": within, "h4.between_mean": between, "h4.statistic": observed})
        m["h4.n_features_silent"] = float(np.sum(counts.per_latent[latents] == 0))
        if community is not None:  # None: no dictionary graph (cooc.error)
            dictionary = np.where(community[latents] >= 0, community[latents], -1 - latents)  # isolated: singletons
            m["h4.ami"] = float(adjusted_mutual_info_score(labels, dictionary))
            m["h4.n_features_in_communities"] = float(np.sum(community[latents] >= 0))
        draws = []
        if n_permutations > 0:
            perm = permutation_null(values, labels, n_permutations, seed)
            m["h4.perm_p"] = upper_p(observed, perm)
            m["h4.perm_n"] = float(len(perm))
            m["h4.perm_null_mean"] = float(np.mean(perm))
            draws.append(pd.DataFrame({"null": "permutation", "draw": np.arange(len(perm)), "statistic": perm}))
        if n_matched > 0:
            matched = matched_null(counts, latents, labels, measure, n_matched, n_bins, seed + 1)
            m["h4.matched_p"] = upper_p(observed, matched)
            m["h4.matched_n"] = float(np.isfinite(matched).sum())
            m["h4.matched_null_mean"] = float(np.nanmean(matched))
            draws.append(pd.DataFrame({"null": "matched_density", "draw": np.arange(len(matched)),
                                       "statistic": matched}))
        if draws:
            result.tables["tables/h4_null.parquet"] = pd.concat(draws, ignore_index=True)
    verdict, reason = h4_verdict(m, len(kept))
    result.tags.update({"h4.verdict": verdict, "h4.verdict_reason": reason})
    return result
