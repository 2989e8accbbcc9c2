"""H1's graph-aware null: rewiring keeps degrees, the fast F/H match scipy, null p-values match a brute-force
count, re-clustering the kept subset, and the null is calibrated where the nominal ANOVA is not."""

from __future__ import annotations

import random

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from featsweep.engines import centrality
from featsweep.engines import graph as graph_engine
from featsweep.config import ClusteringConfig
from featsweep.engines.graph_reference import detect_communities
from featsweep.engines.graph_reference import centralities
from featsweep.hypotheses.h1 import bootstrap_stability, h1_statistics, permutation_null
from featsweep.hypotheses.rewired_null import draw_jobs, kept_partition, null_pvalues, rewire_reference, rewired_null
from featsweep.stages.network import build_network
from featsweep.reports.run_report import Report
from featsweep.hypotheses.stats import anova_kruskal_columns

CENTRALITY = ["degree", "betweenness", "closeness", "eigenvector"]


def _weighted_random_graph():
    graph = nx.gnm_random_graph(30, 70, seed=1)
    for k, (a, b) in enumerate(graph.edges):
        graph.edges[a, b].update(weight=0.3 + k / 1000, distance=0.7 - k / 1000, r=0.3 + k / 1000)
    return graph


def test_reference_rewire_keeps_every_degree_and_the_weights():
    graph = _weighted_random_graph()
    rewired = rewire_reference(graph, 5)
    assert dict(rewired.degree) == dict(graph.degree)
    assert set(rewired.edges) != set(graph.edges)
    assert sorted(d["weight"] for *_, d in rewired.edges(data=True)) == sorted(d["weight"] for *_, d in graph.edges(data=True))
    assert all(d["distance"] == pytest.approx(1 - d["weight"]) for *_, d in rewired.edges(data=True))
    assert nx.utils.edges_equal(rewire_reference(graph, 5).edges, rewired.edges)  # seeded


def test_igraph_rewire_keeps_every_degree_and_the_weights_and_is_seeded():
    g, nodes = graph_engine.from_networkx(_weighted_random_graph())
    state = random.getstate()
    rewired = graph_engine.rewire(g, 5)
    assert random.getstate() == state  # igraph drew from a private generator
    assert rewired.degree() == g.degree() and rewired.is_simple()
    edges = lambda h: {tuple(sorted(e)) for e in h.get_edgelist()}  # noqa: E731
    assert len(edges(rewired) ^ edges(g)) > g.ecount()  # most edges moved (10 m swap trials)
    for attr in ("weight", "r", "distance"):
        assert sorted(rewired.es[attr]) == sorted(g.es[attr])
    np.testing.assert_allclose(rewired.es["distance"], 1 - np.asarray(rewired.es["weight"]))  # attributes move together
    assert g.get_edgelist() == graph_engine.from_networkx(_weighted_random_graph())[0].get_edgelist()  # g untouched
    again = graph_engine.rewire(g, 5)
    assert again.get_edgelist() == rewired.get_edgelist() and again.es["weight"] == rewired.es["weight"]
    assert graph_engine.rewire(g, 6).get_edgelist() != rewired.get_edgelist()


@pytest.mark.parametrize("weighted", [True, False])
def test_engine_centralities_of_null_graphs_match_the_networkx_reference(weighted):
    graph = nx.disjoint_union(nx.gnm_random_graph(25, 50, seed=2), nx.gnm_random_graph(12, 14, seed=3))
    graph.add_nodes_from([100, 101])  # several components and isolated nodes
    rng = np.random.default_rng(0)
    for a, b in graph.edges:
        w = rng.uniform(0.3, 0.95)
        graph.edges[a, b].update(weight=w, distance=1 - w, r=w)
    assert nx.number_connected_components(graph) > 1
    g, nodes = graph_engine.from_networkx(graph)
    reference = centralities(graph, weighted)[0].set_index("feature").loc[nodes]
    fast, _ = centrality.centralities(g, weighted)
    for name in CENTRALITY:
        np.testing.assert_allclose(fast[name], reference[name], atol=1e-6, rtol=0, err_msg=name)
    some, method = centrality.centralities(g, weighted, ["degree", "closeness"])  # only what is asked
    assert list(some) == ["degree", "closeness"] and method == "not_computed"
    np.testing.assert_array_equal(some["closeness"], fast["closeness"])


def _weighted_components(seed=0):
    """A 70-node component, a 9-node one and two isolated nodes, weights in (0.3, 0.95)."""
    graph = nx.disjoint_union(nx.gnm_random_graph(70, 260, seed=seed), nx.gnm_random_graph(9, 14, seed=seed + 1))
    graph.add_nodes_from([200, 201])
    rng = np.random.default_rng(seed)
    for a, b in graph.edges:
        w = rng.uniform(0.3, 0.95)
        graph.edges[a, b].update(weight=w, distance=1 - w, r=w)
    assert nx.is_connected(graph.subgraph(range(70)))
    return graph


@pytest.mark.parametrize("weighted", [True, False])
def test_sampled_centralities_match_the_networkx_subset_reference_and_are_exact_where_all_are_sources(weighted):
    graph = _weighted_components()
    g, nodes = graph_engine.from_networkx(graph)
    exact = centralities(graph, weighted)[0].set_index("feature").loc[nodes]
    for seed in (0, 1):
        # reference: nx.betweenness_centrality_subset and nx Dijkstra from the same sources (graph.sampled_paths)
        reference = centralities(graph, weighted, sources=12, seed=seed)[0].set_index("feature").loc[nodes]
        fast, _ = centrality.centralities(g, weighted, sources=12, seed=seed)
        for name in CENTRALITY:
            np.testing.assert_allclose(fast[name], reference[name], atol=1e-9, rtol=0, err_msg=name)
        small = np.arange(70, len(nodes))  # the 9-node component and the isolated nodes: every node a source
        for name in ("betweenness", "closeness"):
            np.testing.assert_allclose(fast[name][small], exact[name].to_numpy()[small], atol=1e-12, err_msg=name)
            assert not np.allclose(fast[name][:70], exact[name].to_numpy()[:70])  # an estimate in the large one
    assert not np.allclose(centrality.centralities(g, weighted, sources=12, seed=0)[0]["betweenness"],
                           centrality.centralities(g, weighted, sources=12, seed=1)[0]["betweenness"])
    for sources in (None, 70, 500):  # no component larger: the exact values
        fast, _ = centrality.centralities(g, weighted, sources=sources)
        for name in CENTRALITY:
            np.testing.assert_allclose(fast[name], exact[name], atol=1e-9, rtol=0, err_msg=name)
    assert centrality.needs_estimate(g, 69) and not centrality.needs_estimate(g, 70)


def test_sampled_betweenness_is_unbiased_and_closeness_consistent():
    # Brandes-Pich: the sources' dependencies times (component size / sources) average to the exact betweenness
    # over the choice of sources. 400 seeded draws of 10 sources in a 70-node component; each node's mean is
    # within 5 Monte-Carlo standard errors of networkx's exact value (a wrong scale factor fails by far).
    graph = _weighted_components(seed=3)
    g, nodes = graph_engine.from_networkx(graph)
    exact = centralities(graph, True)[0].set_index("feature").loc[nodes]
    draws = {name: np.array([centrality.centralities(g, True, ("betweenness", "closeness"), 10, seed)[0][name]
                             for seed in range(400)]) for name in ("betweenness", "closeness")}
    btw = draws["betweenness"][:, :70]
    se = btw.std(axis=0, ddof=1) / np.sqrt(len(btw)) + 1e-12
    assert np.all(np.abs(btw.mean(axis=0) - exact["betweenness"].to_numpy()[:70]) < 5 * se)
    # closeness = (size - 1) / (n - 1) / (mean distance from the sources): that mean distance is unbiased (a
    # uniform sample of the other nodes), closeness itself a consistent ratio estimate
    n, scale = len(nodes), 69 / (len(nodes) - 1)
    mean_distance = scale / draws["closeness"][:, :70]
    se = mean_distance.std(axis=0, ddof=1) / np.sqrt(len(mean_distance)) + 1e-12
    assert np.all(np.abs(mean_distance.mean(axis=0) - scale / exact["closeness"].to_numpy()[:70]) < 5 * se)
    assert n == 81


def test_cluster_tests_use_the_estimate_where_the_nulls_do_and_the_table_stays_exact():
    cfg = ClusteringConfig(threshold=0.25, min_cluster_size=4, n_null=0, n_bootstrap=0, n_rewire=0, n_continuum=0,
                           centrality_sources=6)
    network = _planted_network(cfg)
    assert len(network.kept_clusters) >= 2
    exact = centralities(network.graph, cfg.weighted)[0].set_index("feature")
    table = network.features.set_index("feature")
    np.testing.assert_allclose(table["betweenness"], exact.loc[table.index, "betweenness"], atol=1e-9)  # exact table
    results = {engine: h1_statistics(network, cfg, 0, has_gen_max=False, progress=False, engine=engine)
               for engine in ("igraph", "networkx")}
    estimate = centralities(network.graph, cfg.weighted, sources=6, seed=0)[0].set_index("feature")
    kept = table["cluster"].isin(network.kept_clusters)
    for name in ("betweenness", "closeness"):
        expected = sps.f_oneway(*[estimate.loc[group.index, name] for _, group in table[kept].groupby("cluster")])
        for result in results.values():
            assert result.metrics[f"h1.{name}.anova_F"] == pytest.approx(expected.statistic, rel=1e-9)
            assert "clustering.centrality_sources=6" in result.tags["h1.centrality_estimate"]
    exact_run = h1_statistics(network, ClusteringConfig(**{**cfg.__dict__, "centrality_sources": None}), 0,
                              has_gen_max=False, progress=False)
    assert "h1.centrality_estimate" not in exact_run.tags
    report = Report()  # the run's report says so beside the H1 table
    report.collect(results["igraph"])
    assert "clustering.centrality_sources=6" in report.result({"steering": {"factor": 10.0}, "seed": 0}).files[
        "report.html"].decode()
    assert exact_run.metrics["h1.betweenness.anova_F"] != pytest.approx(results["igraph"].metrics["h1.betweenness.anova_F"])


def _planted_network(cfg, n_prompts=60, seed=4):
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1, 2, 3], [12, 10, 9, 5])
    values = rng.normal(size=(n_prompts, 4))[:, truth] + 1.1 * rng.normal(size=(n_prompts, len(truth)))
    matrix = pd.DataFrame(values, columns=sorted(rng.choice(5000, size=len(truth), replace=False).tolist()))
    return build_network(matrix, cfg, 0, None, None)


def test_rewired_null_on_igraph_agrees_in_distribution_with_the_networkx_reference():
    # Not the same random swaps (igraph's and networkx's generators differ), so per-draw numbers differ: compare the
    # null distributions of F per metric (two-sample Kolmogorov-Smirnov) over 80 draws of each.
    cfg = ClusteringConfig(threshold=0.25, min_cluster_size=4, n_rewire=80)
    network = _planted_network(cfg)
    assert len(network.kept_clusters) >= 2
    metrics = CENTRALITY + ["abs_corr", "std"]
    fast = rewired_null(network, cfg, 0, metrics, progress=False, engine="igraph")
    reference = rewired_null(network, cfg, 0, metrics, progress=False, engine="networkx")
    pd.testing.assert_frame_equal(fast, rewired_null(network, cfg, 0, metrics, progress=False))  # seeded
    assert fast["anova_F"].notna().mean() > 0.9 and reference["anova_F"].notna().mean() > 0.9
    for metric in metrics:
        a = fast.loc[fast["metric"] == metric, "anova_F"].dropna()
        b = reference.loc[reference["metric"] == metric, "anova_F"].dropna()
        assert sps.ks_2samp(a, b).pvalue > 0.01, metric
        assert not np.allclose(a.to_numpy()[:len(b)], b.to_numpy()[:len(a)])  # different draws, not a copy
    n_kept = fast.groupby("draw")["n_kept"].first()
    assert abs(n_kept.mean() - reference.groupby("draw")["n_kept"].first().mean()) < 1.0


@pytest.mark.parametrize("sources", [None, 8])  # exact, and estimated from 8 sources per component
def test_matched_null_tests_on_igraph_match_the_networkx_reference(sources):
    # The same shuffles give the same edge-matched graphs; where both engines find the same partition (equal
    # matched modularity), the F and H of every metric must agree.
    cfg = ClusteringConfig(threshold=0.25, min_cluster_size=4, n_null=12, n_bootstrap=0, n_rewire=0,
                           centrality_sources=sources)
    network = _planted_network(cfg)
    metrics = CENTRALITY + ["abs_corr", "max", "std"]
    n_edges = network.graph.number_of_edges()
    runs = {engine: permutation_null(network.matrix, cfg, 0, progress=False, match_edges=n_edges,
                                     table=network.features, metrics=metrics, engine=engine)
            for engine in ("igraph", "networkx")}
    fast, reference = runs["igraph"], runs["networkx"]
    same = np.abs(fast["matched_modularity"] - reference["matched_modularity"]) < 1e-12
    assert same.sum() >= len(same) // 2
    stats = [c for c in fast.columns if c[:2] in ("F:", "H:")]
    assert fast.loc[same, stats].notna().to_numpy().mean() > 0.5
    np.testing.assert_allclose(fast.loc[same, stats].to_numpy(float), reference.loc[same, stats].to_numpy(float),
                               rtol=1e-6, atol=1e-9)


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
    # the engine's version (rewired and matched nulls, bootstrap) gives the same partition and kept clusters
    g, nodes = graph_engine.from_networkx(network.graph)
    first_ids = np.array([first[f] for f in nodes])
    membership, kept_ig = graph_engine.kept_membership(g, first_ids, 8, True, cfg.algorithm, cfg.weighted, 1.0, 0, nodes)
    assert dict(zip(nodes, membership.tolist())) == partition and kept_ig == kept


def _calibration(repeats: int, n_rewire: int, sources=256):
    cfg = ClusteringConfig(threshold=0.2, min_cluster_size=3, n_null=n_rewire, n_bootstrap=0, n_rewire=n_rewire, n_continuum=0,
                           centrality_sources=sources)
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


@pytest.mark.parametrize("sources", [256, 6])  # exact; betweenness and closeness from 6 sources in every graph
def test_graph_aware_nulls_are_calibrated_where_nominal_anova_is_not(sources):
    # 20 noise matrices x 4 centralities, 39 draws of each null (null_p < 0.05 then means "above every draw":
    # 1/40 under exchangeability). The verdict asks both nulls to reject: max(null_p, matched_null_p).
    # Larger scale (60 repeats): benchmarks/h1_calibration.py, numbers in docs/statistics.md.
    nominal, rewired, matched = _calibration(repeats=20, n_rewire=39, sources=sources)
    assert len(nominal) >= 40
    assert np.mean(np.maximum(rewired, matched) < 0.05) <= 0.08
    assert np.mean(matched < 0.05) <= 0.10
    assert np.mean(rewired < 0.05) <= 0.15  # rewiring alone is somewhat liberal on correlation graphs
    assert np.mean(nominal < 0.05) >= 0.25  # the circular test rejects far more often


def test_draws_on_a_process_pool_give_the_serial_numbers():
    # the shuffles, resamples and rewiring seeds are drawn in the caller's order; each draw is a pure function of
    # them, so two worker processes must reproduce the in-process tables exactly (not to a tolerance)
    cfg = ClusteringConfig(threshold=0.25, min_cluster_size=4, n_null=4, n_bootstrap=3, n_rewire=4, n_jobs=2)
    network = _planted_network(cfg)
    metrics = CENTRALITY + ["abs_corr", "std"]
    n_edges = network.graph.number_of_edges()
    for n_jobs in (1, 2):
        null = permutation_null(network.matrix, cfg, 0, progress=False, match_edges=n_edges, table=network.features,
                                metrics=metrics, n_jobs=n_jobs)
        rewired = rewired_null(network, cfg, 0, metrics, progress=False, n_jobs=n_jobs)
        boot = bootstrap_stability(network.matrix, network.partition, cfg, 0, progress=False, n_jobs=n_jobs)
        if n_jobs == 1:
            serial = (null, rewired, boot)
    assert null["F:betweenness"].notna().any() and rewired["anova_F"].notna().any()
    for parallel, expected in zip((null, rewired, boot), serial):
        pd.testing.assert_frame_equal(parallel, expected, check_exact=True)
    assert draw_jobs(ClusteringConfig(n_jobs=3), 10) == 3 and draw_jobs(ClusteringConfig(), 10) == 1
