"""Statistics: tests across clusters (H1), nulls and stability, regressions (H3), set comparisons (H2),
and multiple-test correction. Plain functions of arrays and tables, each checked in tests against scipy,
statsmodels or a brute-force enumeration."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

# ---- multiple testing -------------------------------------------------------------------


def adjust_pvalues(pvals, method: str = "bonferroni") -> np.ndarray:
    """Multiple-test adjusted p-values (statsmodels ``multipletests``; e.g. bonferroni, holm, fdr_bh).

    NaN p-values (tests that could not be run) stay NaN and do not count towards the number of tests.
    """
    from statsmodels.stats.multitest import multipletests

    pvals = np.asarray(pvals, dtype=float)
    out = np.full(pvals.shape, np.nan)
    finite = np.isfinite(pvals)
    if finite.any():
        out[finite] = multipletests(pvals[finite], method=method)[1]
    return out


# ---- H1: clusters -----------------------------------------------------------------------

# The H1 test family, each metric once: mean_abs (= abs_summed / n_prompts) would repeat abs_summed's test.
H1_METRICS = ["degree", "betweenness", "closeness", "eigenvector",
              "abs_corr", "max", "summed", "abs_summed", "std", "gen_max_activation"]


def cluster_tests(features: pd.DataFrame, metrics: list[str], clusters: list[int] | None = None,
                  cluster_col: str = "cluster", method: str = "bonferroni") -> pd.DataFrame:
    """One-way ANOVA (``scipy.stats.f_oneway``) and Kruskal-Wallis of each metric across clusters.

    ``clusters`` picks the groups (e.g. the kept clusters); rows with NaN in a metric are left out of its test.
    A test that cannot run (fewer than two groups with data, or all values identical) gets NaN. p-values are
    adjusted over the metrics with ``adjust_pvalues`` (Bonferroni by default), per test family.
    Columns: metric, n_groups, anova_F, anova_p, anova_p_adj, kruskal_H, kruskal_p, kruskal_p_adj.
    """
    if clusters is None:
        clusters = sorted(features[cluster_col].unique())
    rows = []
    for metric in metrics:
        groups = []
        for cluster in clusters:
            values = features.loc[features[cluster_col] == cluster, metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                groups.append(values)
        row = {"metric": metric, "n_groups": len(groups), "anova_F": np.nan, "anova_p": np.nan,
               "kruskal_H": np.nan, "kruskal_p": np.nan}
        pooled = np.concatenate(groups) if groups else np.zeros(0)
        if len(groups) >= 2 and np.ptp(pooled) > 0:
            if all(len(g) >= 1 for g in groups) and len(pooled) > len(groups):
                with np.errstate(all="ignore"):
                    res = sps.f_oneway(*groups)
                row["anova_F"], row["anova_p"] = float(res.statistic), float(res.pvalue)
            res = sps.kruskal(*groups)
            row["kruskal_H"], row["kruskal_p"] = float(res.statistic), float(res.pvalue)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["metric", "n_groups", "anova_F", "anova_p", "kruskal_H", "kruskal_p"])
    table.insert(4, "anova_p_adj", adjust_pvalues(table["anova_p"].to_numpy(), method))
    table["kruskal_p_adj"] = adjust_pvalues(table["kruskal_p"].to_numpy(), method)
    return table


def anova_kruskal_columns(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-way ANOVA F and Kruskal-Wallis H (tie-corrected) of every column of ``values`` (rows = features)
    across ``groups`` at once: the same numbers as ``scipy.stats.f_oneway`` / ``kruskal`` per column, without
    their per-call overhead (the rewired null computes them thousands of times). Columns with NaN, fewer than
    2 groups or no variance give NaN."""
    values = np.asarray(values, dtype=float)
    labels, codes = np.unique(np.asarray(groups), return_inverse=True)
    n, k = values.shape[0], len(labels)
    f_stat = np.full(values.shape[1], np.nan)
    h_stat = np.full(values.shape[1], np.nan)
    if k < 2 or n <= k:
        return f_stat, h_stat
    onehot = np.zeros((n, k))
    onehot[np.arange(n), codes] = 1.0
    counts = onehot.sum(axis=0)
    ok = np.isfinite(values).all(axis=0) & (np.ptp(values, axis=0) > 0)
    x = values[:, ok]
    means = (onehot.T @ x) / counts[:, None]
    grand = x.mean(axis=0)
    between = (counts[:, None] * (means - grand) ** 2).sum(axis=0)
    within = ((x - means[codes]) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f_stat[ok] = (between / (k - 1)) / (within / (n - k))
    ranks = sps.rankdata(x, axis=0)
    rank_sums = onehot.T @ ranks
    h = 12.0 / (n * (n + 1)) * (rank_sums**2 / counts[:, None]).sum(axis=0) - 3.0 * (n + 1)
    ties = np.array([np.sum(c**3 - c) for c in (np.unique(col, return_counts=True)[1].astype(float) for col in x.T)])
    h_stat[ok] = h / (1.0 - ties / (n**3 - n))
    return f_stat, h_stat


def null_summary(observed: float, null: np.ndarray) -> dict[str, float]:
    """Mean and sd of a null sample, z-score of the observed value, and the one-sided empirical p-value
    ``(1 + #{null >= observed}) / (1 + n)`` (NaN draws left out). The z-score is NaN when the null has no
    spread (e.g. no null graph has an edge): it is undefined then, and the p-value carries the answer."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if len(null) == 0 or not np.isfinite(observed):
        return {"mean": float(np.mean(null)) if len(null) else np.nan, "std": np.nan, "z": np.nan, "p": np.nan}
    mean, std = float(null.mean()), float(null.std(ddof=1)) if len(null) > 1 else 0.0
    z = (observed - mean) / std if std > 0 else np.nan
    p = (1 + int(np.sum(null >= observed))) / (1 + len(null))
    return {"mean": mean, "std": std, "z": float(z), "p": float(p)}


# ---- H2 / H3: steering ------------------------------------------------------------------

CENTRALITIES = ["degree", "betweenness", "closeness", "eigenvector"]


def centrality_regression(performance, centrality, covariate=None) -> dict[str, float]:
    """H3: ordinary least squares of ``performance`` on ``centrality`` (``scipy.stats.linregress``):
    slope, intercept, r2 and the two-sided p of the slope. With ``covariate`` (the feature's mean
    |attribution|), also ``p_partial``: the p-value of the centrality coefficient in
    ``performance ~ 1 + centrality + covariate`` (statsmodels OLS), so centrality is tested beyond
    attribution size. Rows with a NaN anywhere are dropped; too few rows or a constant predictor give NaN."""
    y = np.asarray(performance, dtype=float)
    x = np.asarray(centrality, dtype=float)
    z = None if covariate is None else np.asarray(covariate, dtype=float)
    ok = np.isfinite(y) & np.isfinite(x) & (True if z is None else np.isfinite(z))
    out = dict(slope=np.nan, intercept=np.nan, r2=np.nan, p=np.nan, p_partial=np.nan, n=float(ok.sum()))
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0:
        return out
    fit = sps.linregress(x, y)
    out.update(slope=float(fit.slope), intercept=float(fit.intercept), r2=float(fit.rvalue ** 2), p=float(fit.pvalue))
    if z is not None:
        z = z[ok]
        design = np.column_stack([np.ones_like(x), x, z])
        if len(x) >= 4 and np.linalg.matrix_rank(design) == 3:
            import statsmodels.api as sm

            out["p_partial"] = float(sm.OLS(y, design).fit().pvalues[1])
    return out


def permutation_diff(values, is_a, strata, n_permutations: int, seed) -> dict[str, float]:
    """H2: stratified label-permutation test of ``mean(A) - mean(B)``.

    ``values`` are the sets' outcomes, ``is_a`` marks group A (the rest is B), ``strata`` the set size. The
    statistic is the mean over strata (holding both groups) of the per-stratum difference in means; the
    labels are shuffled within each stratum, ``n_permutations`` times (``numpy.random.default_rng(seed)``).
    Two-sided ``p = (1 + #{|T*| >= |T|}) / (1 + n_permutations)``. Returns diff and p (NaN when no stratum
    has 2+ values in each group)."""
    values, is_a, strata = np.asarray(values, float), np.asarray(is_a, bool), np.asarray(strata)
    usable = [s for s in np.unique(strata) if (is_a & (strata == s)).sum() >= 2 and (~is_a & (strata == s)).sum() >= 2]
    if not usable:
        return {"diff": np.nan, "p": np.nan}
    rng = np.random.default_rng(seed)
    blocks = [(values[strata == s], is_a[strata == s]) for s in usable]

    def statistic(labels) -> np.ndarray:  # labels: one [n_perm, n_s] boolean array per stratum
        per = [(lab * v).sum(-1) / lab.sum(-1) - (~lab * v).sum(-1) / (~lab).sum(-1)
               for (v, _), lab in zip(blocks, labels)]
        return np.mean(per, axis=0)

    observed = float(statistic([a[None, :] for _, a in blocks])[0])
    shuffled = [rng.permuted(np.tile(a, (n_permutations, 1)), axis=1) for _, a in blocks]
    null = statistic(shuffled)
    p = (1 + int(np.sum(np.abs(null) >= abs(observed) - 1e-12))) / (1 + n_permutations)
    return {"diff": observed, "p": float(p)}
