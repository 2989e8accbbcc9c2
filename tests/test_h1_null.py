"""H1's graph-aware null: rewiring keeps degrees, the fast F/H match scipy, null p-values match a brute-force
count, re-clustering the kept subset, and the null is calibrated where the nominal ANOVA is not."""

from __future__ import annotations

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from featsweep.config import ClusteringConfig
from featsweep.graph import detect_communities
from featsweep.graph import centralities
from featsweep.h1 import h1_statistics, kept_partition, null_centralities, null_pvalues, rewire
from featsweep.network import build_network
from featsweep.stats import anova_kruskal_columns

CENTRALITY = ["degree", "betweenness", "closeness", "eigenvector"]


def test_rewire_keeps_every_degree_and_the_weights():
    graph = nx.gnm_random_graph(30, 70, seed=1)
    for k, (a, b) in enumerate(graph.edges):
        graph.edges[a, b].update(weight=0.3 + k / 1000, distance=0.7 - k / 1000, r=0.3 + k / 1000)
    rewired = rewire(graph, 5)
    assert dict(rewired.degree) == dict(graph.degree)
    assert set(rewired.edges) != set(graph.edges)
    assert sorted(d["weight"] for *_, d in rewired.edges(data=True)) == sorted(d["weight"] for *_, d in graph.edges(data=True))
    assert all(d["distance"] == pytest.approx(1 - d["weight"]) for *_, d in rewired.edges(data=True))
    assert nx.utils.edges_equal(rewire(graph, 5).edges, rewired.edges)  # seeded


@pytest.mark.parametrize("weighted", [True, False])
def test_null_centralities_match_the_networkx_reference(weighted):
    graph = nx.disjoint_union(nx.gnm_random_graph(25, 50, seed=2), nx.gnm_random_graph(12, 14, seed=3))
    graph.add_nodes_from([100, 101])  # several components and isolated nodes
    rng = np.random.default_rng(0)
    for a, b in graph.edges:
        w = rng.uniform(0.3, 0.95)
        graph.edges[a, b].update(weight=w, distance=1 - w)
    assert nx.number_connected_components(graph) > 1
    fast = null_centralities(graph, weighted).set_index("feature")
    reference = centralities(graph, weighted)[0].set_index("feature")
    pd.testing.assert_frame_equal(fast, reference, check_exact=False, atol=1e-9)


def test_fast_anova_and_kruskal_match_scipy():
    rng = np.random.default_rng(0)
    groups = np.repeat([3, 1, 7], [9, 6, 5])
    values = np.column_stack([rng.normal(size=20), rng.integers(0, 4, 20).astype(float),  # ties for Kruskal
                              np.ones(20), rng.exponential(size=20)])
    f_stat, h_stat = anova_kruskal_columns(values, groups)
    for j in (0, 1, 3):
        parts = [values[groups == g, j] for g in (1, 3, 7)]
        assert f_stat[j] == pytest.approx(sps.f_oneway(*parts).statistic)
        assert h_stat[j] == pytest.approx(sps.kruskal(*parts).statistic)
    assert np.isnan(f_stat[2]) and np.isnan(h_stat[2])  # constant column


def test_null_pvalues_by_brute_force():
    tests = pd.DataFrame({"metric": ["a", "b"], "anova_F": [3.0, 10.0], "kruskal_H": [1.0, np.nan]})
    null = pd.DataFrame({"metric": ["a"] * 4 + ["b"] * 4, "anova_F": [1.0, 3.0, 5.0, np.nan, 1, 2, 3, 4],
                         "kruskal_H": [0.5, 2.0, np.nan, 0.1, 1, 1, 1, 1]})
    got = null_pvalues(tests, null).set_index("metric")
    assert got.loc["a", "null_p"] == pytest.approx((1 + 2) / (1 + 3))  # 3 and 5 are >= 3; NaN left out
    assert got.loc["b", "null_p"] == pytest.approx(1 / 5)
    assert got.loc["a", "kruskal_null_p"] == pytest.approx((1 + 1) / (1 + 3))
    assert np.isnan(got.loc["b", "kruskal_null_p"])
    assert got.loc["a", "null_p_adj"] == pytest.approx(min(1.0, 2 * 0.75))
    assert got.loc["a", "n_null_valid"] == 3


def test_recluster_kept_reclusters_the_kept_subgraph_only():
    rng = np.random.default_rng(3)
    truth = np.repeat([0, 1, 2, 3], [12, 12, 12, 3])
    matrix = pd.DataFrame(rng.normal(size=(80, 4))[:, truth] + 0.9 * rng.normal(size=(80, 39)))
    cfg = ClusteringConfig(threshold=0.25, min_cluster_size=8, recluster_kept=True)
    network = build_network(matrix, ClusteringConfig(threshold=0.25, min_cluster_size=8), 0, None, None)
    partition, kept = kept_partition(network.graph, cfg, 0)
    first = detect_communities(network.graph, cfg.algorithm, cfg.weighted, cfg.resolution, 0)
    members = sorted(f for f, c in first.items() if c in network.kept_clusters)
    expected = detect_communities(network.graph.subgraph(members).copy(), cfg.algorithm, cfg.weighted, 1.0, 0)
    groups = lambda part, fs: sorted(sorted(f for f in fs if part[f] == c) for c in {part[f] for f in fs})  # noqa: E731
    assert groups(partition, members) == groups(expected, members)
    assert all(len([f for f in partition if partition[f] == c]) >= 8 for c in kept)


def _calibration(repeats: int, n_rewire: int):
    cfg = ClusteringConfig(threshold=0.2, min_cluster_size=3, n_null=n_rewire, n_bootstrap=0, n_rewire=n_rewire)
    nominal, null, matched = [], [], []
    for rep in range(repeats):
        matrix = pd.DataFrame(np.random.default_rng([rep, 11]).normal(size=(50, 24)))  # no cluster structure
        network = build_network(matrix, cfg, rep, None, None)
        if len(network.kept_clusters) < 2:
            continue
        metrics = h1_statistics(network, cfg, rep, has_gen_max=False, progress=False).metrics
        plt.close("all")
        nominal += [metrics[f"h1.{m}.anova_p"] for m in CENTRALITY]
        null += [metrics[f"h1.{m}.null_p"] for m in CENTRALITY]
        matched += [metrics[f"h1.{m}.matched_null_p"] for m in CENTRALITY]
    return np.array(nominal), np.array(null), np.array(matched)


def test_graph_aware_nulls_are_calibrated_where_nominal_anova_is_not():
    # 20 noise matrices x 4 centralities, 39 draws of each null (null_p < 0.05 then means "above every draw":
    # 1/40 under exchangeability). The verdict asks both nulls to reject: max(null_p, matched_null_p).
    # Larger scale (60 repeats): benchmarks/h1_calibration.py, numbers in the README.
    nominal, rewired, matched = _calibration(repeats=20, n_rewire=39)
    assert len(nominal) >= 40
    assert np.mean(np.maximum(rewired, matched) < 0.05) <= 0.08
    assert np.mean(matched < 0.05) <= 0.10
    assert np.mean(rewired < 0.05) <= 0.15  # rewiring alone is somewhat liberal on correlation graphs
    assert np.mean(nominal < 0.05) >= 0.25  # the circular test rejects far more often
