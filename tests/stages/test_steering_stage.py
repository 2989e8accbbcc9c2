"""Set sampling, the H2/H3 statistics and the steering stage end to end on the tiny subject."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from featsweep.config import SteeringConfig
from featsweep.errors import FeatsweepError
from featsweep.stages.steering import SETS_TABLE, SINGLE_TABLE, mean_pairwise_corr, sample_sets, steering_stage
from featsweep.hypotheses.stats import CENTRALITIES, centrality_regression
from featsweep.stages.task import baseline_performance
from helpers import fake_attrs, fake_network

CLUSTERS = {0: list(range(0, 6)), 1: list(range(10, 16)), 2: list(range(20, 25))}


def draw(sizes=(1, 2, 3, 4), samples=6, samplings=("within", "between"), clusters=CLUSTERS, seed=0):
    return sample_sets(clusters, list(sizes), samples, list(samplings), np.random.default_rng(seed))


def test_within_sets_come_from_one_cluster_and_rotate():
    sets = [s for s in draw() if s["sampling"] == "within"]
    assert len(sets) == 4 * 6
    for s in sets:
        assert len(s["clusters"]) == 1 and len(set(s["features"])) == s["size"]
        assert set(s["features"]) <= set(CLUSTERS[s["clusters"][0]])
    for n in (1, 2, 3, 4):  # 6 samples over 3 clusters: 2 each
        counts = Counter(s["clusters"][0] for s in sets if s["size"] == n)
        assert sorted(counts.values()) == [2, 2, 2]


def test_between_sets_are_balanced():
    sets = [s for s in draw(samples=6) if s["sampling"] == "between"]
    owner = {f: c for c, fs in CLUSTERS.items() for f in fs}
    for s in sets:
        per = Counter(owner[f] for f in s["features"])
        assert len(s["features"]) == s["size"] == len(set(s["features"]))
        if s["size"] <= 3:
            assert len(per) == s["size"]  # n <= K: distinct clusters
        else:
            assert max(per.values()) - min(per.values()) <= 1 and len(per) == 3  # n > K: as even as possible
    for n in (1, 2, 3):  # every cluster appears equally often over the samples
        counts = Counter(c for s in sets if s["size"] == n for c in s["clusters"])
        assert len(set(counts.values())) == 1


def test_sampling_is_seeded():
    assert draw(seed=3) == draw(seed=3)
    assert draw(seed=3) != draw(seed=4)


def test_a_set_larger_than_a_kept_cluster_is_refused_where_the_data_is():
    with pytest.raises(FeatsweepError, match="kept cluster 2 has only 5"):
        draw(sizes=[6])


@pytest.mark.parametrize("values,match", [(dict(set_sizes=[0, 1]), "set_sizes"), (dict(set_sizes=[-2]), "set_sizes"),
                                          (dict(set_sizes=[]), "set_sizes"), (dict(samples_per_size=0), "samples_per_size")])
def test_bad_set_values_are_refused_by_the_schema(values, match):
    with pytest.raises(FeatsweepError, match=match):
        SteeringConfig(**values)


def test_between_large_sets_and_single_cluster():
    with pytest.raises(FeatsweepError, match="between-cluster"):
        draw(sizes=[16], samplings=["between"])
    sets = draw(sizes=[7], samplings=["between"])  # 7 > K=3 is allowed: 3+2+2 from the three clusters
    assert len(sets) == 6
    for s in sets:
        per_cluster = Counter(next(c for c, members in CLUSTERS.items() if f in members) for f in s["features"])
        assert len(set(s["features"])) == 7 and sorted(per_cluster.values()) == [2, 2, 3]
    assert all(s["sampling"] == "within" for s in draw(clusters={0: CLUSTERS[0]}))  # no between with one cluster


def test_mean_pairwise_corr():
    corr = pd.DataFrame([[1, 0.5, 0.1], [0.5, 1, 0.3], [0.1, 0.3, 1]], index=[4, 7, 9], columns=[4, 7, 9])
    assert mean_pairwise_corr((4, 7, 9), corr) == pytest.approx(0.3)
    assert np.isnan(mean_pairwise_corr((4,), corr))


def test_centrality_regression_matches_scipy_and_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    x, z = rng.normal(size=40), rng.normal(size=40)
    y = 0.5 * x + 0.8 * z + rng.normal(size=40)
    res = centrality_regression(y, x, z)
    fit = sps.linregress(x, y)
    assert res["slope"] == pytest.approx(fit.slope) and res["p"] == pytest.approx(fit.pvalue)
    assert res["r2"] == pytest.approx(fit.rvalue ** 2) and res["intercept"] == pytest.approx(fit.intercept)
    ols = sm.OLS(y, sm.add_constant(np.column_stack([x, z]))).fit()
    assert res["p_partial"] == pytest.approx(ols.pvalues[1])
    assert np.isnan(centrality_regression(y, np.ones(40), z)["p"])  # constant predictor: no fit
    x[0] = np.nan
    assert centrality_regression(y, x, z)["n"] == 39


@pytest.fixture(scope="module")
def stage_inputs(tiny_subject, tiny_task):

    attrs = fake_attrs(tiny_subject, tiny_task)
    baseline = baseline_performance(tiny_subject.model, tiny_task)
    gen_max = np.random.default_rng(2).uniform(0.5, 2.0, tiny_subject.d_sae)
    return attrs, baseline, gen_max


def test_steering_stage_end_to_end(tiny_subject, tiny_task, stage_inputs):
    attrs, baseline, gen_max = stage_inputs
    network = fake_network(tiny_subject)
    cfg = SteeringConfig(factor=4.0, set_sizes=[1, 2, 3, 4], samples_per_size=3, batch_size=128)
    _, result = steering_stage(tiny_subject, tiny_task, attrs, network, baseline, gen_max, cfg, seed=0)
    assert result.skip_reason is None
    single, sets = result.tables[SINGLE_TABLE], result.tables[SETS_TABLE]
    assert len(single) == 14 * tiny_task.n
    assert {"feature", "cluster", "prompt_idx", "prob", "drop_prob", "rank", "logit_diff", "top10_entropy",
            "exact_delta_logit_diff", "linear_delta_logit_diff"} <= set(single.columns)
    np.testing.assert_allclose(single["drop_prob"], np.tile(baseline["prob"], 14) - single["prob"], atol=1e-9)
    assert len(sets) == 3 * 4 * 3 and set(sets["sampling"]) == {"within", "between", "random"}
    assert sets.loc[sets["size"] > 1, "mean_corr"].notna().all()
    for c in CENTRALITIES:
        for key in ("slope", "intercept", "r2", "p", "p_partial"):
            assert np.isfinite(result.metrics[f"h3.{c}.{key}"]), (c, key)
    for key in ("h2.within.mean_prob", "h2.between.mean_prob", "h2.random.mean_prob", "h2.p", "h2.diff",
                "h2.within_vs_random.p", "h2.size2.within_mean_prob", "h2.size2.between_mean_prob", "h2.size2.p",
                "steering.linear_vs_exact_r"):
        assert key in result.metrics and np.isfinite(result.metrics[key]), key
    assert {result.tags["h2.verdict"], result.tags["h3.verdict"]} <= {"supported", "not_supported", "inconclusive"}
    assert result.metrics["steering.linear_vs_exact_r"] > 0.5
    assert set(result.figures) == {"plots/steering_performance_vs_centrality.png", "plots/steering_within_vs_between.png",
                                   "plots/steering_cluster_breakdown.png", "plots/steering_linear_vs_exact.png"}
    # the same seed draws the same sets
    _, again = steering_stage(tiny_subject, tiny_task, attrs, network, baseline, gen_max, cfg, seed=0)
    pd.testing.assert_frame_equal(again.tables[SETS_TABLE], sets)
    import matplotlib.pyplot as plt

    for fig in list(result.figures.values()) + list(again.figures.values()):
        plt.close(fig)


def test_steering_stage_normalized_and_reference(tiny_subject, tiny_task, stage_inputs):
    attrs, baseline, gen_max = stage_inputs
    network = fake_network(tiny_subject, n_per_cluster=(4, 4))
    common = dict(factor=6.0, set_sizes=[2], samples_per_size=2, normalize_by_set_size=True, mode="zero_ablate",
                  positions="last")
    _, fast = steering_stage(tiny_subject, tiny_task, attrs, network, baseline, gen_max, SteeringConfig(**common), seed=1)
    _, ref = steering_stage(tiny_subject, tiny_task, attrs, network, baseline, gen_max,
                         SteeringConfig(engine="reference", **common), seed=1)
    sets = fast.tables[SETS_TABLE]
    assert (sets["factor"] == 3.0).all()
    np.testing.assert_allclose(sets["logit_diff"], ref.tables[SETS_TABLE]["logit_diff"], atol=1e-4)
    np.testing.assert_allclose(fast.tables[SINGLE_TABLE]["logit_diff"], ref.tables[SINGLE_TABLE]["logit_diff"], atol=1e-4)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_steering_stage_skips_without_kept_cluster(tiny_subject, tiny_task, stage_inputs):
    attrs, baseline, gen_max = stage_inputs
    network = fake_network(tiny_subject, kept=[])
    _, result = steering_stage(tiny_subject, tiny_task, attrs, network, baseline, gen_max, SteeringConfig(), seed=0)
    assert result.skip_reason and "no cluster" in result.skip_reason
    with pytest.raises(FeatsweepError, match="within-cluster"):
        steering_stage(tiny_subject, tiny_task, attrs, fake_network(tiny_subject), baseline, gen_max,
                       SteeringConfig(set_sizes=[5]), seed=0)


def test_steering_stage_without_resid_grad_or_between(tiny_subject, tiny_task, stage_inputs):
    attrs, baseline, gen_max = stage_inputs
    bare = SimpleNamespace(**{**vars(attrs), "resid_grad": []})
    network = fake_network(tiny_subject, n_per_cluster=(4,))
    cfg = SteeringConfig(set_sizes=[1, 2], samples_per_size=2, scale="unit")
    _, result = steering_stage(tiny_subject, tiny_task, bare, network, baseline, None, cfg, seed=0)
    assert np.isnan(result.metrics["steering.linear_vs_exact_r"])
    assert "h2.p" not in result.metrics and "steering.h2" in result.tags
    assert "plots/steering_linear_vs_exact.png" not in result.figures
    import matplotlib.pyplot as plt

    plt.close("all")
