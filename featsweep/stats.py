"""Statistics: tests across clusters (H1), nulls and stability, regressions (H3), set comparisons (H2),
and multiple-test correction. Plain functions of arrays and tables, each checked against scipy in tests."""

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

H1_METRICS = ["degree", "betweenness", "closeness", "eigenvector",
              "abs_corr", "max", "summed", "abs_summed", "std", "mean_abs", "gen_max_activation"]


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


def null_summary(observed: float, null: np.ndarray) -> dict[str, float]:
    """Mean and sd of a null sample, z-score of the observed value, and the one-sided empirical p-value
    ``(1 + #{null >= observed}) / (1 + n)`` (NaN draws left out)."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if len(null) == 0 or not np.isfinite(observed):
        return {"mean": float(np.mean(null)) if len(null) else np.nan, "std": np.nan, "z": np.nan, "p": np.nan}
    mean, std = float(null.mean()), float(null.std(ddof=1)) if len(null) > 1 else 0.0
    z = (observed - mean) / std if std > 0 else (np.inf if observed > mean else (-np.inf if observed < mean else 0.0))
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


def rank_biserial(u_statistic: float, n1: int, n2: int) -> float:
    """Rank-biserial correlation from the Mann-Whitney U of the first sample:
    P(first > second) - P(first < second), in [-1, 1]."""
    return float(2.0 * u_statistic / (n1 * n2) - 1.0)


def compare_within_between(within, between) -> dict[str, float]:
    """H2: within-cluster against between-cluster set performance.

    Two-sided Mann-Whitney U: the samples are small, independent and bounded (probabilities) with no
    reason to expect normality, so a rank test is used. Effect size: rank-biserial correlation
    (``> 0``: within-cluster sets keep MORE performance than between-cluster sets, i.e. hurt less).
    Fewer than 2 values on either side gives NaN p and effect size."""
    a = np.asarray(within, dtype=float)
    b = np.asarray(between, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = dict(within_mean=float(a.mean()) if len(a) else np.nan, between_mean=float(b.mean()) if len(b) else np.nan,
               n_within=float(len(a)), n_between=float(len(b)), u=np.nan, p=np.nan, effect_size=np.nan)
    if len(a) < 2 or len(b) < 2:
        return out
    if np.ptp(np.concatenate([a, b])) == 0:  # all ties: no evidence of a difference
        out.update(u=float(len(a) * len(b) / 2), p=1.0, effect_size=0.0)
        return out
    res = sps.mannwhitneyu(a, b, alternative="two-sided")
    out.update(u=float(res.statistic), p=float(res.pvalue), effect_size=rank_biserial(res.statistic, len(a), len(b)))
    return out
