"""H1 statistics and multiple testing, against scipy/statsmodels and hand calculations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from featsweep.hypotheses.stats import adjust_pvalues, cluster_tests, null_summary


def test_bonferroni_by_hand_and_nan():
    p = np.array([0.01, 0.2, np.nan, 0.5])
    got = adjust_pvalues(p)
    # 3 tests that ran: p * 3, capped at 1; the NaN stays NaN and does not count
    np.testing.assert_allclose(got[[0, 1, 3]], [0.03, 0.6, 1.0])
    assert np.isnan(got[2])
    holm = adjust_pvalues([0.01, 0.04, 0.03], method="holm")
    np.testing.assert_allclose(holm, [0.03, 0.06, 0.06])  # sorted: 0.01*3, 0.03*2, max(0.04*1, 0.06)
    assert np.all(np.isnan(adjust_pvalues([np.nan, np.nan])))


def test_anova_by_hand():
    table = pd.DataFrame({"cluster": [0, 0, 0, 1, 1, 1], "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    res = cluster_tests(table, ["x"]).iloc[0]
    # grand mean 3.5; SSB = 3*1.5^2*2 = 13.5 (df 1); SSW = 2 + 2 = 4 (df 4) -> F = 13.5
    assert res["anova_F"] == pytest.approx(13.5)
    assert res["anova_p"] == pytest.approx(sps.f.sf(13.5, 1, 4))
    assert res["anova_p_adj"] == pytest.approx(res["anova_p"])  # one metric: no correction


def test_cluster_tests_match_scipy():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "cluster": np.repeat([0, 1, 2, 3], [12, 10, 8, 3]),
        "a": rng.normal(size=33) + np.repeat([0, 0.5, 1.0, 0.0], [12, 10, 8, 3]),
        "b": rng.exponential(size=33),
        "c": rng.normal(size=33),
    })
    kept = [0, 1, 2]  # cluster 3 is not kept and must be left out
    got = cluster_tests(table, ["a", "b", "c"], clusters=kept).set_index("metric")
    for metric in ["a", "b", "c"]:
        groups = [table.loc[table["cluster"] == c, metric] for c in kept]
        anova, kw = sps.f_oneway(*groups), sps.kruskal(*groups)
        assert got.loc[metric, "anova_F"] == pytest.approx(anova.statistic)
        assert got.loc[metric, "anova_p"] == pytest.approx(anova.pvalue)
        assert got.loc[metric, "anova_p_adj"] == pytest.approx(min(1.0, 3 * anova.pvalue))
        assert got.loc[metric, "kruskal_H"] == pytest.approx(kw.statistic)
        assert got.loc[metric, "kruskal_p_adj"] == pytest.approx(min(1.0, 3 * kw.pvalue))
        assert got.loc[metric, "n_groups"] == 3


def test_untestable_metrics_are_nan_and_not_counted():
    table = pd.DataFrame({"cluster": [0, 0, 1, 1, 1], "flat": [1.0] * 5, "x": [1.0, 2.0, 4.0, 5.0, 6.5],
                          "missing": [np.nan, np.nan, 1.0, 2.0, 3.0]})
    got = cluster_tests(table, ["flat", "x", "missing"]).set_index("metric")
    assert np.isnan(got.loc["flat", "anova_p"]) and np.isnan(got.loc["flat", "kruskal_p"])
    assert np.isnan(got.loc["missing", "anova_p"])  # one group left with data
    # only "x" could be tested, so its adjusted p equals its raw p
    assert got.loc["x", "anova_p_adj"] == pytest.approx(got.loc["x", "anova_p"])


def test_null_summary_by_hand():
    null = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    s = null_summary(5.0, null)
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["z"] == pytest.approx((5.0 - 2.5) / np.std([1, 2, 3, 4], ddof=1))
    assert s["p"] == pytest.approx(1 / 5)  # (1 + 0) / (1 + 4)
    assert null_summary(3.0, null)["p"] == pytest.approx(3 / 5)  # 3 and 4 are >= 3
    assert np.isnan(null_summary(1.0, np.zeros(5))["z"])  # no spread: undefined, never inf (1.8e308 in MLflow)
    assert null_summary(1.0, np.zeros(5))["p"] == pytest.approx(1 / 6)
    assert np.isnan(null_summary(np.nan, null)["z"])
