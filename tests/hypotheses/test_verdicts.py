"""The verdict rules, case by case, and the self-contained report page."""

from __future__ import annotations

import base64

import matplotlib.pyplot as plt
import numpy as np

from featsweep.reports.run_report import Report
from featsweep.results import StageResult
from featsweep.hypotheses.verdicts import h1_verdict, h2_verdict, h3_verdict

H1_GOOD = {"h1.matched_modularity_p": 0.01, "h1.bootstrap_ari_mean": 0.8, "h1.continuum_p": 0.01,
           "h1.silhouette": 0.4,
           "h1.degree.null_p_adj": 0.02, "h1.degree.matched_null_p_adj": 0.03, "h1.degree.continuum_null_p_adj": 0.04,
           "h1.std.null_p_adj": 0.5, "h1.std.matched_null_p_adj": 0.001, "h1.std.continuum_null_p_adj": 0.001}


def test_h1_rule():
    assert h1_verdict(H1_GOOD, n_kept=3)[0] == "supported"
    assert h1_verdict(H1_GOOD, n_kept=1)[0] == "inconclusive"
    assert h1_verdict({**H1_GOOD, "h1.bootstrap_ari_mean": 0.3}, 3)[0] == "not_supported"
    assert h1_verdict({**H1_GOOD, "h1.matched_modularity_p": 0.2}, 3)[0] == "not_supported"
    # a metric must pass BOTH nulls: degree fails the matched one, std the rewired one
    worse = {**H1_GOOD, "h1.degree.matched_null_p_adj": 0.2}
    verdict, reason = h1_verdict(worse, 3)
    assert verdict == "not_supported" and "graph-aware" in reason
    assert h1_verdict({k: v for k, v in H1_GOOD.items() if "bootstrap" not in k}, 3)[0] == "inconclusive"
    assert h1_verdict({**H1_GOOD, "h1.degree.anova_p_adj": 1e-9}, 3)[0] == "supported"  # nominal p not used
    few = {**worse, "h1.degree.n_null_valid": 20.0, "h1.degree.n_matched_null_valid": 20.0}
    verdict, reason = h1_verdict(few, 3)  # 2 metrics, 20 draws: p_adj >= 2/21 whatever the data
    assert verdict == "inconclusive" and "too few null draws" in reason
    assert h1_verdict({**few, "h1.bootstrap_ari_mean": 0.2}, 3)[0] == "not_supported"  # fails anyway


def test_h1_rule_asks_for_discrete_clusters():
    # cuts of a continuum: everything else passes, the silhouette does not beat the fitted continua
    verdict, reason = h1_verdict({**H1_GOOD, "h1.continuum_p": 0.4}, 3)
    assert verdict == "not_supported" and reason.startswith("fails: discreteness") and "p=0.4" in reason
    assert "bootstrap" not in reason and "graph-aware" not in reason  # names only the criterion that failed
    both = {**H1_GOOD, "h1.continuum_p": 0.2, "h1.bootstrap_ari_mean": 0.1}
    assert h1_verdict(both, 3)[1].count(";") == 1  # two criteria failed, both named
    verdict, reason = h1_verdict({k: v for k, v in H1_GOOD.items() if "continuum" not in k}, 3)
    assert verdict == "inconclusive" and "clustering.n_continuum" in reason  # the continuum null did not run
    few = {**H1_GOOD, "h1.continuum_p": 1 / 11, **{f"h1.continuum_{s}.n_valid": 10.0 for s in ("segment", "sheet")}}
    verdict, reason = h1_verdict(few, 3)  # 10 valid draws: p >= 1/11 whatever the data
    assert verdict == "inconclusive" and "clustering.n_continuum" in reason and "0.0909" in reason
    assert h1_verdict({**few, "h1.continuum_segment.n_valid": 200.0, "h1.continuum_sheet.n_valid": 200.0},
                      3)[0] == "not_supported"  # enough draws: the clusters are not discrete


def test_h1_metrics_count_once_the_clusters_are_discrete():
    # the per-metric continuum p is for reading a metric alone: discrete clusters whose degree beats both
    # graph-aware nulls but not the (rejected) continua's draws are supported
    gradient = {**H1_GOOD, "h1.degree.continuum_null_p_adj": 0.3, "h1.std.continuum_null_p_adj": 0.9}
    assert h1_verdict(gradient, 3)[0] == "supported"
    # on a continuum the same metrics cannot make the verdict: discreteness fails
    verdict, reason = h1_verdict({**gradient, "h1.continuum_p": 0.6}, 3)
    assert verdict == "not_supported" and "graph-aware" not in reason
    # both starved: each criterion that cannot pass is named with its knob
    starved = {**gradient, "h1.continuum_p": 1 / 11, "h1.continuum_sheet.n_valid": 10.0,
               "h1.degree.matched_null_p_adj": 0.2, "h1.degree.n_matched_null_valid": 20.0}
    verdict, reason = h1_verdict(starved, 3)
    assert verdict == "inconclusive" and "clustering.n_continuum" in reason and "clustering.n_rewire" in reason


def test_h2_rule():
    both = {"h2.p": 0.01, "h2.diff": -0.1, "h2.within_vs_random.p": 0.02, "h2.within_vs_random.diff": -0.05}
    assert h2_verdict(both)[0] == "supported"
    assert h2_verdict({**both, "h2.within_vs_random.p": 0.3})[0] == "inconclusive"
    assert h2_verdict({**both, "h2.diff": 0.1, "h2.within_vs_random.p": 0.3})[0] == "not_supported"  # wrong sign
    assert h2_verdict({"h2.p": 0.01, "h2.diff": -0.1})[0] == "inconclusive"  # no random control


def test_h3_rule():
    base = {f"h3.{c}.{k}": v for c in ("degree", "betweenness", "closeness", "eigenvector")
            for k, v in (("p_adj", 0.5), ("slope", -1.0), ("p_partial", 0.5))}
    assert h3_verdict(base)[0] == "not_supported"
    assert h3_verdict({**base, "h3.betweenness.p_adj": 0.01, "h3.betweenness.p_partial": 0.02})[0] == "supported"
    assert h3_verdict({**base, "h3.betweenness.p_adj": 0.01})[0] == "inconclusive"  # not beyond |attribution|
    assert h3_verdict({**base, "h3.degree.p_adj": 0.01, "h3.degree.p_partial": 0.01, "h3.degree.slope": 2.0})[0] \
        == "inconclusive"  # more central -> MORE probability is not the hypothesis
    assert h3_verdict({})[0] == "inconclusive"


def test_report_is_one_self_contained_page():
    report = Report()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    report.collect(StageResult(metrics={**H1_GOOD, "h1.degree.anova_F": 12.0, "network.n_edges": 10.0},
                               tags={"h1.verdict": "supported", "h1.verdict_reason": "because"},
                               figures={"plots/network.png": fig}))
    plt.close(fig)
    result = report.result({"steering": {"factor": 10.0}, "seed": 0})
    page = result.files["report.html"].decode()
    assert result.tags == {"h2.verdict": "inconclusive", "h2.verdict_reason": result.tags["h2.verdict_reason"],
                           "h3.verdict": "inconclusive", "h3.verdict_reason": result.tags["h3.verdict_reason"],
                           "h4.verdict": "inconclusive", "h4.verdict_reason": result.tags["h4.verdict_reason"]}
    assert "cooccurrence stage did not run" in result.tags["h4.verdict_reason"]
    assert "class='supported'" in page and "NOMINAL" in page and "The verdict rules" in page
    payload = page.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(payload).startswith(b"\x89PNG")
    assert "src='plots/" not in page and "<script" not in page  # nothing outside the page
    assert np.isfinite(H1_GOOD["h1.bootstrap_ari_mean"])
