"""The co-occurrence network: planted clusters are recovered, nulls behave, centralities match networkx/numpy,
thresholds are inclusive, and degenerate inputs give a skip reason instead of a crash."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import adjusted_rand_score

from featsweep.engines import graph_reference as graphmod
from featsweep.config import ClusteringConfig
from featsweep.engines.graph_reference import build_graph, centralities, correlate, detect_communities, partition_modularity
from featsweep.hypotheses.h1 import permutation_null
from featsweep.stages.network import FEATURE_COLUMNS, attribution_metrics, network_stage


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def planted(n_prompts=100, k=3, per=15, noise=0.5, seed=0):
    """k latent prompt factors, each driving ``per`` features, plus independent noise."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n_prompts, k))
    truth = np.repeat(np.arange(k), per)
    values = factors[:, truth] * rng.uniform(0.5, 2.0, size=k * per) + noise * rng.normal(size=(n_prompts, k * per))
    ids = list(rng.choice(24576, size=k * per, replace=False))
    return pd.DataFrame(values, columns=[int(i) for i in ids]), truth


@pytest.mark.parametrize("algorithm", ["greedy_modularity", "louvain", "leiden"])
def test_planted_partition_is_recovered(algorithm, tmp_path):
    matrix, truth = planted()
    cfg = ClusteringConfig(algorithm=algorithm, threshold=0.7, edges="positive", n_null=5, n_bootstrap=5, n_rewire=5,
                           n_continuum=3)
    gen_max = np.linspace(0, 1, 24576)
    net, result = network_stage(matrix, cfg, seed=0, gen_max=gen_max, neuronpedia_id="gpt2-small/7-res-jb",
                                progress=False)
    assert result.skip_reason is None
    found = [net.partition[f] for f in matrix.columns]
    assert adjusted_rand_score(truth, found) >= 0.9
    assert len(net.kept_clusters) == 3 and result.metrics["network.n_kept_clusters"] == 3
    # the structure is far beyond the permutation null, and stable under prompt resampling
    assert result.metrics["network.n_edges"] > 10 * max(result.metrics["h1.null_edges_mean"], 1)
    assert result.metrics["h1.bootstrap_ari_mean"] >= 0.9
    assert result.metrics["h1.matched_modularity_z"] > 3  # against nulls of the same edge count
    # no null graph above the threshold has an edge: the z-scores against that null are undefined and not logged
    # (never inf, which MLflow shows as 1.8e308); the p-values carry the answer
    for name in ("edges", "modularity"):
        assert result.metrics[f"h1.null_{name}_std"] == 0 and f"h1.{name}_z" not in result.metrics
        assert result.metrics[f"h1.{name}_p"] == pytest.approx(1 / 6)
    assert not any(np.isinf(v) for v in result.metrics.values())
    features = result.tables["tables/features.parquet"]
    assert list(features.columns) == FEATURE_COLUMNS
    np.testing.assert_allclose(features["gen_max_activation"], gen_max[features["feature"]])
    assert features["neuronpedia_url"].iloc[0] == f"https://www.neuronpedia.org/gpt2-small/7-res-jb/{features['feature'].iloc[0]}"
    for name in ["network.n_features", "network.n_edges", "network.n_clusters", "network.modularity",
                 "h1.null_edges_mean", "h1.null_modularity_mean", "h1.bootstrap_ari_mean",
                 "h1.closeness.anova_p_adj", "h1.max.kruskal_p_adj"]:
        assert name in result.metrics, name
    for name in ["corr_heatmap_raw", "corr_heatmap_sorted", "network", "violins_centrality",
                 "violins_attribution", "null_edges", "null_modularity"]:
        assert f"plots/{name}.png" in result.figures
    # graphml carries the feature-table columns as node attributes
    graph = nx.read_graphml(io.BytesIO(result.files["network/graph.graphml"]), node_type=int)
    node = int(features["feature"].iloc[0])
    assert graph.nodes[node]["cluster"] == features["cluster"].iloc[0]
    assert graph.nodes[node]["betweenness"] == pytest.approx(features["betweenness"].iloc[0])
    assert graph.number_of_edges() == result.metrics["network.n_edges"]


def test_permutation_null_on_noise():
    rng = np.random.default_rng(3)
    n, p = 100, 40
    noise = pd.DataFrame(rng.normal(size=(n, p)))
    cfg = ClusteringConfig(threshold=0.25, edges="positive", n_null=30)
    null = permutation_null(noise, cfg, seed=0, progress=False)
    observed = len(graphmod.edge_list(correlate(noise.to_numpy()), 0.25, "positive")[0])
    # observed edges on pure noise lie inside the null distribution
    assert np.quantile(null["n_edges"], 0.01) <= observed <= np.quantile(null["n_edges"], 0.99)
    # and the null mean agrees with the exact null of a Pearson r: t = r sqrt((n-2)/(1-r^2)) ~ t(n-2)
    r = 0.25
    expected = p * (p - 1) / 2 * sps.t.sf(r * np.sqrt((n - 2) / (1 - r**2)), n - 2)
    se = np.sqrt(expected / len(null))  # edge counts are roughly Poisson
    assert abs(null["n_edges"].mean() - expected) < 4 * se + 0.5


def test_noise_network_is_within_null(tmp_path):
    rng = np.random.default_rng(4)
    noise = pd.DataFrame(rng.normal(size=(100, 40)))
    cfg = ClusteringConfig(threshold=0.2, edges="positive", n_null=30, n_bootstrap=0, min_cluster_size=2, n_rewire=0,
                           n_continuum=0)
    net, result = network_stage(noise, cfg, 0, None, None, progress=False)
    assert result.metrics["network.n_edges"] > 0
    null = result.tables["tables/h1_null.parquet"]
    for column, observed in [("n_edges", result.metrics["network.n_edges"]),
                             ("matched_modularity", result.metrics["network.modularity"])]:
        assert np.quantile(null[column], 0.01) <= observed <= np.quantile(null[column], 0.99), column
    assert abs(result.metrics["h1.edges_z"]) < 3 and abs(result.metrics["h1.matched_modularity_z"]) < 3


def test_correlation_matches_numpy_and_scipy():
    matrix, _ = planted(n_prompts=30, per=4, seed=1)
    values = matrix.to_numpy()
    np.testing.assert_allclose(correlate(values, "pearson"), np.corrcoef(values.T), atol=1e-12)
    np.testing.assert_allclose(correlate(values, "spearman"), sps.spearmanr(values).statistic, atol=1e-12)


def test_edges_are_inclusive_and_signed():
    feats = [10, 20, 30, 40]
    corr = pd.DataFrame(np.eye(4), index=feats, columns=feats)
    pairs = {(10, 20): 0.7, (10, 30): 0.69, (20, 30): -0.75, (30, 40): 0.7 + 1e-13, (20, 40): 0.1 * 7}
    for (a, b), r in pairs.items():
        corr.loc[a, b] = corr.loc[b, a] = r
    positive = build_graph(corr, 0.7, "positive")
    assert {frozenset(e) for e in positive.edges} == {frozenset((10, 20)), frozenset((30, 40)), frozenset((20, 40))}
    both = build_graph(corr, 0.7, "abs")
    assert both.has_edge(20, 30) and both[20][30]["weight"] == pytest.approx(0.75)
    assert both[20][30]["r"] == pytest.approx(-0.75) and both[20][30]["distance"] == pytest.approx(0.25)
    assert not both.has_edge(10, 30)
    assert set(positive.nodes) == set(feats)


def test_constant_features_are_dropped_and_counted(tmp_path):
    matrix, _ = planted(per=12, seed=2)
    matrix[5] = 1.5  # constant: no correlation exists
    matrix[6] = 0.0
    net, result = network_stage(matrix, ClusteringConfig(n_null=0, n_bootstrap=0, n_rewire=0, n_continuum=0), 0, None, None,
                                progress=False)
    assert result.metrics["network.n_constant_features"] == 2
    assert 5 not in net.graph and 6 not in net.corr.columns
    assert not net.corr.isna().any().any()
    assert result.metrics["network.n_features"] == matrix.shape[1] - 2


def test_centralities_match_networkx_and_numpy():
    # a fixed weighted graph: two triangles joined through node 3, plus a pendant 6
    edges = {(0, 1): 0.9, (0, 2): 0.8, (1, 2): 0.75, (2, 3): 0.7, (3, 4): 0.95, (3, 5): 0.85, (4, 5): 0.8, (5, 6): 0.72}
    graph = nx.Graph()
    for (a, b), w in edges.items():
        graph.add_edge(a, b, weight=w, distance=1 - w)
    frame, method = centralities(graph, weighted=True)
    frame = frame.set_index("feature")
    assert method == "eigh"
    deg, btw = nx.degree_centrality(graph), nx.betweenness_centrality(graph, weight="distance")
    clo = nx.closeness_centrality(graph, distance="distance")
    for node in graph:
        assert frame.loc[node, "degree"] == pytest.approx(deg[node])
        assert frame.loc[node, "betweenness"] == pytest.approx(btw[node])
        assert frame.loc[node, "closeness"] == pytest.approx(clo[node])
    # eigenvector: principal eigenvector of the weighted adjacency (unit norm), by numpy
    nodes = list(frame.index)
    adj = nx.to_numpy_array(graph, nodelist=nodes, weight="weight")
    vals, vecs = np.linalg.eigh(adj)
    principal = np.abs(vecs[:, np.argmax(vals)])
    np.testing.assert_allclose(frame.loc[nodes, "eigenvector"].to_numpy(), principal / np.linalg.norm(principal),
                               atol=1e-4)
    # unweighted: a hand-checked path a-b-c
    path, _ = centralities(nx.path_graph(3), weighted=False)
    np.testing.assert_allclose(path["degree"], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(path["betweenness"], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(path["closeness"], [2 / 3, 1.0, 2 / 3])


def test_eigenvector_per_component_matches_networkx_on_each_component():
    # two weighted components and an isolated node: numpy's whole-graph solver raises AmbiguousSolution here
    graph = nx.Graph()
    for (a, b), w in {(0, 1): 0.9, (1, 2): 0.8, (0, 2): 0.7, (3, 4): 0.95, (4, 5): 0.6}.items():
        graph.add_edge(a, b, weight=w, distance=1 - w)
    graph.add_node(6)
    with pytest.raises(nx.AmbiguousSolution):
        nx.eigenvector_centrality_numpy(graph, weight="weight")
    frame, method = centralities(graph, weighted=True)
    assert method == "eigh_per_component"
    got = frame.set_index("feature")["eigenvector"]
    for members in ({0, 1, 2}, {3, 4, 5}):
        reference = nx.eigenvector_centrality(graph.subgraph(members), weight="weight", max_iter=1000, tol=1e-10)
        for node in members:  # unit norm in the component, scaled by sqrt(component share)
            assert got[node] == pytest.approx(reference[node] * np.sqrt(3 / 7), abs=1e-6)
    assert got[6] == 0.0
    assert np.linalg.norm(got) == pytest.approx(np.sqrt(6 / 7))


def test_network_stage_runs_on_disconnected_planted_clusters(tmp_path):
    # the crash case: 8 independent groups, 100 features, 100 prompts, threshold 0.3
    rng = np.random.default_rng(0)
    truth = np.arange(100) % 8
    values = rng.normal(size=(100, 8))[:, truth] + 0.8 * rng.normal(size=(100, 100))
    matrix = pd.DataFrame(values, columns=list(range(100)))
    cfg = ClusteringConfig(threshold=0.3, min_cluster_size=5, n_null=2, n_bootstrap=2, n_rewire=2, n_continuum=2)
    net, result = network_stage(matrix, cfg, 0, None, None, progress=False)
    assert result.metrics["network.n_components"] >= 2  # disconnected: whole-graph numpy eigen-solvers raise
    assert result.tags["network.eigenvector_method"] in ("eigh_per_component", "per_component_lapack")
    assert net.features["eigenvector"].notna().all() and (net.features["eigenvector"] > 0).all()
    assert adjusted_rand_score(truth, [net.partition[f] for f in range(100)]) > 0.8
    assert result.tags["h1.verdict"] in {"supported", "not_supported", "inconclusive"}


def test_communities_modularity_and_seeding():
    graph = nx.Graph()
    graph.add_weighted_edges_from([(a, b, 0.9) for a in range(6) for b in range(a + 1, 6)]
                                  + [(a, b, 0.8) for a in range(6, 10) for b in range(a + 1, 10)] + [(0, 6, 0.7)])
    graph.add_node(99)
    for algorithm in ["greedy_modularity", "louvain", "leiden"]:
        part = detect_communities(graph, algorithm, weighted=True, seed=4)
        assert part == detect_communities(graph, algorithm, weighted=True, seed=4)
        assert {part[n] for n in range(6)} == {0} and {part[n] for n in range(6, 10)} == {1} and part[99] == 2
        expected = nx.community.modularity(graph, [set(range(6)), set(range(6, 10)), {99}], weight="weight")
        assert partition_modularity(graph, part, weighted=True) == pytest.approx(expected)


def test_attribution_metrics_match_pandas():
    matrix, _ = planted(n_prompts=20, per=3, seed=5)
    corr = matrix.corr()
    got = attribution_metrics(matrix, corr).set_index("feature")
    abs_corr = (corr.abs().sum() - 1) / (len(corr) - 1)
    np.testing.assert_allclose(got["abs_corr"], abs_corr[got.index])
    np.testing.assert_allclose(got["max"], matrix.max()[got.index])
    np.testing.assert_allclose(got["summed"], matrix.sum()[got.index])
    np.testing.assert_allclose(got["abs_summed"], matrix.abs().sum()[got.index])
    np.testing.assert_allclose(got["std"], matrix.std()[got.index])
    np.testing.assert_allclose(got["mean_abs"], matrix.abs().mean()[got.index])


def test_min_cluster_size_is_inclusive(tmp_path):
    matrix, _ = planted(per=15)
    cfg = ClusteringConfig(min_cluster_size=15, n_null=0, n_bootstrap=0, n_rewire=0, n_continuum=0)
    net, result = network_stage(matrix, cfg, 0, None, None, progress=False)
    assert len(net.kept_clusters) == 3 and result.skip_reason is None
    cfg = ClusteringConfig(min_cluster_size=16, n_null=0, n_bootstrap=0, n_rewire=0, n_continuum=0)
    net, result = network_stage(matrix, cfg, 0, None, None, progress=False)
    assert net is not None and net.kept_clusters == []
    assert "clustering.min_cluster_size" in result.skip_reason
    assert "h1.tests_skipped" in result.tags


def test_no_edges_gives_skip_reason(tmp_path):
    rng = np.random.default_rng(6)
    noise = pd.DataFrame(rng.normal(size=(50, 20)))
    cfg = ClusteringConfig(threshold=0.95, n_null=3, n_bootstrap=3, n_continuum=0)
    net, result = network_stage(noise, cfg, 0, None, None, progress=False)
    assert net is not None and net.graph.number_of_edges() == 0 and net.kept_clusters == []
    assert "clustering.threshold" in result.skip_reason
    assert result.metrics["network.n_edges"] == 0
    assert result.tags["network.eigenvector_method"] == "undefined"
    assert result.files["network/graph.graphml"].startswith(b"<?xml")


@pytest.mark.parametrize("n_features", [0, 1])
def test_too_few_features_returns_none(tmp_path, n_features):
    matrix = pd.DataFrame(np.random.default_rng(0).normal(size=(10, n_features)))
    net, result = network_stage(matrix, ClusteringConfig(), 0, None, None, progress=False)
    assert net is None and "attribution.selection" in result.skip_reason


def test_feature_cap_keeps_largest_mean_abs(tmp_path):
    matrix, _ = planted(per=10, seed=7)
    matrix = matrix * np.linspace(1, 3, matrix.shape[1])  # distinct scales
    cfg = ClusteringConfig(max_features=12, min_cluster_size=2, n_null=0, n_bootstrap=0, n_rewire=0, n_continuum=0)
    net, result = network_stage(matrix, cfg, 0, None, None, progress=False)
    expected = matrix.abs().mean().sort_values(ascending=False).index[:12]
    assert sorted(net.matrix.columns) == sorted(expected)
    assert result.metrics["network.n_capped_features"] == matrix.shape[1] - 12
    assert "clustering.max_features" in result.tags["network.feature_cap"]
