"""The co-occurrence network: correlation -> graph -> communities -> centrality, with H1 nulls and stability.

Conventions (each one is an option or a documented choice):

* **Feature cap.** ``clustering.max_features`` (default 2000) keeps the features of largest mean |attribution|
  when more vary across prompts (metric ``network.n_capped_features``, tag ``network.feature_cap``): community
  detection grows superlinearly and runs ``1 + 2 n_null + n_bootstrap`` times (``benchmarks/network.py``).
* **Constant features.** A feature whose attribution is the same on every prompt has no defined correlation.
  It is dropped before correlating and counted in ``network.n_constant_features``; it never gives NaN edges.
* **Correlation.** Pearson (default) or Spearman (Pearson of the column ranks, average ranks for ties)
  across prompts.
* **Edges.** ``clustering.edges=abs``: an edge when ``|r| >= clustering.threshold``, weight ``|r|``.
  ``clustering.edges=positive``: an edge when ``r >= threshold``, weight ``r``. The comparison is inclusive,
  with a 1e-9 allowance for floating-point round-off (so ``r = 0.7`` computed as 0.69999999999 is an edge).
  Every edge also carries ``r`` (signed) and ``distance = 1 - weight``.
* **Weights.** ``clustering.weighted=true``: community detection, modularity and eigenvector centrality use
  ``weight``; betweenness and closeness use the path length ``distance = 1 - weight`` (strongly correlated
  features are close). ``weighted=false``: every edge counts 1 (hop counts). Degree centrality is always the
  networkx fraction of other nodes a node is joined to.
* **Engine.** Everything below is computed on igraph by :mod:`featsweep.graph` (compiled; the nulls and the
  bootstrap compute edges, communities and modularity only). ``network_stage(..., engine="networkx")`` runs the
  original networkx implementation, kept as the reference that ``tests/test_graph.py`` and
  ``benchmarks/network.py`` compare against.
* **Communities.** greedy_modularity (Clauset-Newman-Moore), louvain (seeded) or leiden (leidenalg,
  ``RBConfigurationVertexPartition`` with ``resolution_parameter=clustering.resolution``, seeded). Cluster ids are
  renumbered by size, 0 = largest (ties: lower smallest feature id first). Clusters with
  ``size >= clustering.min_cluster_size`` (inclusive) are kept.
* **Eigenvector centrality.** The principal eigenvector of each connected component's weighted adjacency, unit
  norm within the component (isolated features 0): networkx's ``eigenvector_centrality`` on a graph with one
  component, and defined on disconnected graphs too. The tag ``network.eigenvector_method`` says how it was
  found (``per_component_lapack`` / ``per_component_arpack``; ``..._lapack_fallback`` when ARPACK did not
  converge, metric ``network.eigenvector_converged`` = 0; the networkx reference: ``power_iteration`` or
  ``numpy_fallback``). The column is never dropped.
* **H1 null.** Each feature's column is shuffled across prompts independently (a seeded generator), then the
  whole pipeline (correlate, threshold, cluster) reruns: null edge counts and null modularities
  (``h1.null_modularity_mean``, ``h1.modularity_z``). Because modularity depends on density (sparse null graphs
  of disjoint pairs score near 1), an edge-matched null is also reported: the observed number of strongest
  null pairs, reclustered (``h1.null_matched_modularity_mean``, ``h1.matched_modularity_z``).
* **H1 stability.** Prompts are resampled with replacement, the pipeline reruns, and the adjusted Rand index
  against the full-data partition is taken over the features present in both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import networkx as nx
import numpy as np
import pandas as pd
from scipy import stats as sps
from tqdm.auto import tqdm

from featsweep import graph as fgraph
from featsweep.config import ClusteringConfig, CommunityAlgorithm, CorrelationMethod, EdgeSign
from featsweep.errors import FeatsweepError
from featsweep.results import StageResult
from featsweep.subject import neuronpedia_url

log = logging.getLogger(__name__)

EDGE_TOLERANCE = 1e-9
CENTRALITY_METRICS = ["degree", "betweenness", "closeness", "eigenvector"]
ATTRIBUTION_METRICS = ["abs_corr", "max", "summed", "abs_summed", "std", "mean_abs"]
FEATURE_COLUMNS = ["feature", "cluster", "kept", *CENTRALITY_METRICS, *ATTRIBUTION_METRICS,
                   "gen_max_activation", "neuronpedia_url"]


@dataclass
class Network:
    matrix: pd.DataFrame  # prompts x features used (constant features dropped)
    corr: pd.DataFrame  # features x features
    graph: nx.Graph  # nodes = int feature ids, attributes = the features-table columns
    partition: dict[int, int]  # feature -> cluster id, 0 = largest cluster
    kept_clusters: list[int]  # clusters with size >= min_cluster_size (inclusive)
    features: pd.DataFrame  # one row per feature (FEATURE_COLUMNS)


# ---- building blocks ------------------------------------------------------------------------------------


def drop_constant(matrix: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """Remove features with zero variance across prompts; return (kept matrix, dropped feature ids)."""
    values = matrix.to_numpy(dtype=float)
    constant = np.ptp(values, axis=0) == 0 if values.shape[0] else np.ones(values.shape[1], bool)
    return matrix.loc[:, ~constant], [int(f) for f in matrix.columns[constant]]


def cap_features(matrix: pd.DataFrame, cap: int) -> pd.DataFrame:
    """The ``cap`` features of largest mean |attribution| (ties: lower id), in ascending feature order."""
    score = np.abs(matrix.to_numpy(dtype=float)).mean(axis=0)
    order = np.lexsort((np.asarray(matrix.columns), -score))[:cap]
    return matrix.iloc[:, np.sort(order)]


def correlate(values: np.ndarray, method: CorrelationMethod | str = CorrelationMethod.pearson) -> np.ndarray:
    """Feature x feature correlation of a prompts x features array whose columns are not constant."""
    return fgraph.correlate(values, CorrelationMethod(method))


def edge_list(corr: np.ndarray, threshold: float, edges: EdgeSign | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle (i, j, r) of the pairs that pass the threshold (inclusive, see module docstring)."""
    i, j = np.triu_indices(corr.shape[0], k=1)
    r = corr[i, j]
    score = np.abs(r) if EdgeSign(edges) is EdgeSign.abs else r
    keep = score >= threshold - EDGE_TOLERANCE
    return i[keep], j[keep], r[keep]


def _graph_from_pairs(features: list[int], i, j, r, edges: EdgeSign | str) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(features)
    signed = EdgeSign(edges) is EdgeSign.positive
    for a, b, value in zip(i, j, r):
        weight = float(value) if signed else float(abs(value))
        graph.add_edge(features[a], features[b], weight=weight, r=float(value), distance=max(0.0, 1.0 - weight))
    return graph


def build_graph(corr: pd.DataFrame, threshold: float, edges: EdgeSign | str) -> nx.Graph:
    """Nodes = every feature of ``corr`` (isolated ones included); edges with weight, r and distance."""
    i, j, r = edge_list(corr.to_numpy(), threshold, edges)
    return _graph_from_pairs([int(f) for f in corr.columns], i, j, r, edges)


def top_pairs_graph(corr: np.ndarray, features: list[int], n_edges: int, edges: EdgeSign | str) -> nx.Graph:
    """The graph of the ``n_edges`` strongest pairs (by |r| or r, whatever the threshold; only r > 0 in
    positive mode): a null graph with the observed edge count, so its modularity is comparable."""
    i, j = np.triu_indices(corr.shape[0], k=1)
    r = corr[i, j]
    score = np.abs(r) if EdgeSign(edges) is EdgeSign.abs else r
    order = np.argsort(-score, kind="stable")[:n_edges]
    order = order[score[order] > 0]
    return _graph_from_pairs(features, i[order], j[order], r[order], edges)


def _relabel(communities: list[set]) -> dict[int, int]:
    ordered = sorted((sorted(c) for c in communities if c), key=lambda c: (-len(c), c[0]))
    return {int(f): cid for cid, members in enumerate(ordered) for f in members}


def detect_communities(graph: nx.Graph, algorithm: CommunityAlgorithm | str, weighted: bool = True,
                       resolution: float = 1.0, seed: int = 0) -> dict[int, int]:
    """feature -> cluster id (0 = largest). A graph with no edges gives singletons."""
    algorithm = CommunityAlgorithm(algorithm)
    nodes = list(graph.nodes)
    if graph.number_of_edges() == 0:
        return _relabel([{n} for n in nodes])
    weight = "weight" if weighted else None
    if algorithm is CommunityAlgorithm.greedy_modularity:
        communities = nx.community.greedy_modularity_communities(graph, weight=weight, resolution=resolution)
    elif algorithm is CommunityAlgorithm.louvain:
        communities = nx.community.louvain_communities(graph, weight=weight, resolution=resolution, seed=seed)
    else:
        import igraph as ig
        import leidenalg

        index = {n: k for k, n in enumerate(nodes)}
        g = ig.Graph(n=len(nodes), edges=[(index[a], index[b]) for a, b in graph.edges])
        weights = [float(d["weight"]) for _, _, d in graph.edges(data=True)] if weighted else None
        part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights=weights,
                                        resolution_parameter=resolution, seed=int(seed) % (2**31 - 1),
                                        n_iterations=-1)
        communities = [{nodes[k] for k in members} for members in part]
    return _relabel(list(communities))


def partition_modularity(graph: nx.Graph, partition: dict[int, int], weighted: bool = True,
                         resolution: float = 1.0) -> float:
    """networkx modularity of the partition (NaN for a graph without edges)."""
    if graph.number_of_edges() == 0:
        return float("nan")
    groups: dict[int, set] = {}
    for node, cid in partition.items():
        groups.setdefault(cid, set()).add(node)
    return float(nx.community.modularity(graph, list(groups.values()), weight="weight" if weighted else None,
                                         resolution=resolution))


def centralities(graph: nx.Graph, weighted: bool = True) -> tuple[pd.DataFrame, str]:
    """degree, betweenness, closeness and eigenvector centrality per node, and how eigenvector was found.

    Method is ``power_iteration``, ``numpy_fallback`` (power iteration did not converge) or ``undefined``
    (no edges: every node gets 0).
    """
    nodes = list(graph.nodes)
    distance = "distance" if weighted else None
    weight = "weight" if weighted else None
    degree = nx.degree_centrality(graph) if len(nodes) > 1 else {n: 0.0 for n in nodes}
    betweenness = nx.betweenness_centrality(graph, weight=distance, normalized=True)
    closeness = nx.closeness_centrality(graph, distance=distance)
    if graph.number_of_edges() == 0:
        eigen, method = {n: 0.0 for n in nodes}, "undefined"
    else:
        try:
            eigen, method = nx.eigenvector_centrality(graph, max_iter=1000, weight=weight), "power_iteration"
        except (nx.PowerIterationFailedConvergence, ZeroDivisionError):
            eigen, method = nx.eigenvector_centrality_numpy(graph, weight=weight), "numpy_fallback"
            eigen = {n: abs(float(v)) for n, v in eigen.items()}
            log.warning("Eigenvector centrality did not converge by power iteration; used the numpy eigen-solver.")
    frame = pd.DataFrame({
        "feature": nodes,
        "degree": [degree[n] for n in nodes],
        "betweenness": [betweenness[n] for n in nodes],
        "closeness": [closeness[n] for n in nodes],
        "eigenvector": [float(eigen[n]) for n in nodes],
    })
    return frame, method


def attribution_metrics(matrix: pd.DataFrame, corr: pd.DataFrame) -> pd.DataFrame:
    """The blog's per-feature attribution metrics over prompts.

    abs_corr: mean |r| with every other feature of the network. max: the largest attribution. summed: the sum.
    abs_summed: the sum of |attribution| (total magnitude). std: sample standard deviation (ddof=1).
    mean_abs: mean |attribution|.
    """
    values = matrix.to_numpy(dtype=float)
    c = np.abs(corr.loc[matrix.columns, matrix.columns].to_numpy())
    n = c.shape[0]
    abs_corr = (c.sum(axis=1) - np.diag(c)) / (n - 1) if n > 1 else np.zeros(n)
    return pd.DataFrame({
        "feature": [int(f) for f in matrix.columns],
        "abs_corr": abs_corr,
        "max": values.max(axis=0),
        "summed": values.sum(axis=0),
        "abs_summed": np.abs(values).sum(axis=0),
        "std": values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1]),
        "mean_abs": np.abs(values).mean(axis=0),
    })


def cluster_matrix(values: np.ndarray, features: list[int], cfg: ClusteringConfig, seed: int,
                   engine: str = "igraph") -> tuple[int, dict[int, int], float]:
    """The whole pipeline on a prompts x features array: correlate, threshold, cluster, modularity.
    Returns ``(n_edges, partition, modularity)``.

    Constant columns are dropped first (so a resample can be clustered safely). ``engine="igraph"``: the
    compiled path of :mod:`featsweep.graph` (edges, communities, modularity only); ``"networkx"``: the reference.
    """
    values = np.asarray(values, dtype=float)
    if engine == "igraph":
        c = fgraph.cluster_values(values, cfg.method, cfg.threshold, cfg.edges, cfg.algorithm, cfg.weighted,
                                  cfg.resolution, seed, features)
        feats = [f for f, k in zip(features, c.keep) if k]
        return c.n_edges, dict(zip(feats, c.membership.tolist())), c.modularity
    keep = np.ptp(values, axis=0) > 0
    feats = [f for f, k in zip(features, keep) if k]
    corr = pd.DataFrame(correlate(values[:, keep], cfg.method), index=feats, columns=feats)
    graph = build_graph(corr, cfg.threshold, cfg.edges)
    partition = detect_communities(graph, cfg.algorithm, cfg.weighted, cfg.resolution, seed)
    return graph.number_of_edges(), partition, partition_modularity(graph, partition, cfg.weighted, cfg.resolution)


def permutation_null(matrix: pd.DataFrame, cfg: ClusteringConfig, seed: int, progress: bool = True,
                     recluster: bool = True, match_edges: Optional[int] = None, engine: str = "igraph"
                     ) -> pd.DataFrame:
    """``cfg.n_null`` draws after shuffling each feature across prompts independently.

    Shuffling keeps every feature's distribution and breaks the co-occurrence between features. Columns:

    * ``n_edges``: edges passing the threshold; ``modularity``: modularity of the reclustered threshold graph.
      A null graph without edges has no community structure: its modularity counts as 0 (at threshold 0.7
      most null graphs are empty). With ``recluster=False`` only edges are counted and modularity is NaN.
    * ``matched_modularity`` (when ``match_edges`` is given): modularity of the reclustered graph of the
      ``match_edges`` strongest null pairs. Modularity is not comparable between graphs of different density
      (a sparse null graph of disjoint pairs scores near 1), so this edge-matched null is the fair reference
      for the observed modularity.

    ``engine="igraph"`` correlates each draw once and computes only edges, communities and modularity
    (:mod:`featsweep.graph`); ``"networkx"`` is the reference. Both draw the same shuffles.
    """
    rng = np.random.default_rng([seed, 1])
    values = matrix.to_numpy(dtype=float)
    features = [int(f) for f in matrix.columns]
    weighted = cfg.weighted
    rows = []
    for draw in tqdm(range(cfg.n_null), desc="H1 permutation null", leave=False, disable=not progress):
        shuffled = rng.permuted(values, axis=0)
        row = {"draw": draw, "n_edges": 0, "modularity": float("nan"), "matched_modularity": float("nan")}
        if engine == "igraph":
            keep = np.ptp(shuffled, axis=0) > 0
            feats = [f for f, k in zip(features, keep) if k]
            corr = fgraph.correlate(shuffled[:, keep], cfg.method)
            if recluster:
                i, j, r = fgraph.threshold_edges(corr, cfg.threshold, cfg.edges)
                g = fgraph.build(len(feats), i, j, r, cfg.edges)
                part = fgraph.communities(g, cfg.algorithm, weighted, cfg.resolution, seed + draw, feats)
                row["n_edges"] = g.ecount()
                row["modularity"] = 0.0 if g.ecount() == 0 else fgraph.modularity(g, part, weighted, cfg.resolution)
            else:
                row["n_edges"] = fgraph.count_edges(corr, cfg.threshold, cfg.edges)
            if match_edges:
                row["matched_modularity"] = fgraph.matched_modularity(corr, match_edges, cfg.edges, cfg.algorithm,
                                                                      weighted, cfg.resolution, seed + draw, feats)
            rows.append(row)
            continue
        if recluster:
            row["n_edges"], _, modularity = cluster_matrix(shuffled, features, cfg, seed + draw, engine)
            row["modularity"] = 0.0 if row["n_edges"] == 0 else modularity
        else:
            row["n_edges"] = len(edge_list(correlate(shuffled, cfg.method), cfg.threshold, cfg.edges)[0])
        if match_edges:
            keep = np.ptp(shuffled, axis=0) > 0
            feats = [f for f, k in zip(features, keep) if k]
            graph = top_pairs_graph(correlate(shuffled[:, keep], cfg.method), feats, match_edges, cfg.edges)
            part = detect_communities(graph, cfg.algorithm, weighted, cfg.resolution, seed + draw)
            row["matched_modularity"] = partition_modularity(graph, part, weighted, cfg.resolution)
        rows.append(row)
    return pd.DataFrame(rows, columns=["draw", "n_edges", "modularity", "matched_modularity"])


def bootstrap_stability(matrix: pd.DataFrame, partition: dict[int, int], cfg: ClusteringConfig, seed: int,
                        progress: bool = True, engine: str = "igraph") -> pd.DataFrame:
    """``cfg.n_bootstrap`` resamples of the prompts (with replacement), reclustered; ARI against ``partition``
    over the features present in both (a feature constant in a resample drops out of that draw)."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng([seed, 2])
    values = matrix.to_numpy(dtype=float)
    features = [int(f) for f in matrix.columns]
    rows = []
    for draw in tqdm(range(cfg.n_bootstrap), desc="H1 bootstrap", leave=False, disable=not progress):
        sample = values[rng.integers(0, len(values), size=len(values))]
        n_edges, boot, _ = cluster_matrix(sample, features, cfg, seed + draw, engine)
        common = [f for f in features if f in boot and f in partition]
        ari = adjusted_rand_score([partition[f] for f in common], [boot[f] for f in common]) if common else np.nan
        rows.append({"draw": draw, "ari": float(ari), "n_common": len(common), "n_edges": n_edges})
    return pd.DataFrame(rows, columns=["draw", "ari", "n_common", "n_edges"])


def _graphml_value(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "" if value is None else float("nan")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def _validate(cfg: ClusteringConfig) -> None:
    if not 0 < cfg.threshold <= 1:
        raise FeatsweepError(f"clustering.threshold={cfg.threshold}: use a correlation in (0, 1].")
    if cfg.min_cluster_size < 1:
        raise FeatsweepError(f"clustering.min_cluster_size={cfg.min_cluster_size}: use at least 1.")
    if getattr(cfg, "max_features", None) is not None and cfg.max_features < 2:
        raise FeatsweepError(f"clustering.max_features={cfg.max_features}: use at least 2, or null for no cap.")
    if cfg.n_null < 0 or cfg.n_bootstrap < 0:
        raise FeatsweepError("clustering.n_null and clustering.n_bootstrap must be >= 0.")


# ---- the stage --------------------------------------------------------------------------------------------


def network_stage(matrix: pd.DataFrame, cfg: ClusteringConfig, seed: int, gen_max: Optional[np.ndarray],
                  neuronpedia_id: Optional[str], out_dir: Path, progress: bool = True, engine: str = "igraph"
                  ) -> tuple[Optional[Network], StageResult]:
    """Build and describe the network of ``matrix`` (prompts x features) and run the H1 statistics.

    Returns ``(None, result)`` when fewer than 2 non-constant features exist; otherwise a Network, with
    ``result.skip_reason`` set when no edge passes ``clustering.threshold`` or no cluster reaches
    ``clustering.min_cluster_size`` (the later stages then skip; nothing raises).

    ``engine="igraph"`` (the default) computes on :mod:`featsweep.graph`; ``engine="networkx"`` is the plain
    reference that tests and ``benchmarks/network.py`` compare it with.
    """
    if engine not in ("igraph", "networkx"):
        raise FeatsweepError(f"network engine {engine!r}: use igraph or networkx.")
    from featsweep import plots
    from featsweep.stats import H1_METRICS, cluster_tests, null_summary

    _validate(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = StageResult()

    def skip(reason: str) -> None:
        result.skip_reason = reason
        result.tags["network.skip_reason"] = reason
        log.warning(reason)

    used, constant = drop_constant(matrix)
    result.metrics["network.n_input_features"] = float(matrix.shape[1])
    result.metrics["network.n_constant_features"] = float(len(constant))
    if used.shape[1] < 2:
        skip(f"The network needs at least 2 features that vary across prompts; got {used.shape[1]} "
             f"({matrix.shape[1]} selected, {len(constant)} constant and dropped). Relax the feature selection "
             "(attribution.selection=min_fraction or attribution.selection=topk).")
        return None, result

    cap = getattr(cfg, "max_features", None)
    result.metrics["network.n_capped_features"] = 0.0
    if cap and used.shape[1] > cap:
        used = cap_features(used, cap)
        n_capped = matrix.shape[1] - len(constant) - cap
        result.metrics["network.n_capped_features"] = float(n_capped)
        note = (f"{cap + n_capped} features vary across prompts; kept the top clustering.max_features={cap} by "
                f"mean |attribution|. Raise clustering.max_features (slower) or choose the features with "
                f"attribution.selection=topk.")
        result.tags["network.feature_cap"] = note
        log.warning(note)

    features = [int(f) for f in used.columns]
    corr = pd.DataFrame(correlate(used.to_numpy(), cfg.method), index=features, columns=features)
    if engine == "igraph":
        graph, partition, modularity, central, eig_method = fgraph.observe(
            corr.to_numpy(), features, cfg.threshold, cfg.edges, cfg.algorithm, cfg.weighted, cfg.resolution, seed)
    else:
        graph = build_graph(corr, cfg.threshold, cfg.edges)
        partition = detect_communities(graph, cfg.algorithm, cfg.weighted, cfg.resolution, seed)
        modularity = partition_modularity(graph, partition, cfg.weighted, cfg.resolution)
        central, eig_method = centralities(graph, cfg.weighted)
    sizes = pd.Series(partition).value_counts()
    kept = sorted(int(c) for c, size in sizes.items() if size >= cfg.min_cluster_size)
    table = central.merge(attribution_metrics(used, corr), on="feature")
    table.insert(1, "cluster", [partition[f] for f in table["feature"]])
    table.insert(2, "kept", table["cluster"].isin(kept))
    gen = np.asarray(gen_max, dtype=float) if gen_max is not None else None
    table["gen_max_activation"] = [float(gen[f]) if gen is not None and f < len(gen) else np.nan
                                   for f in table["feature"]]
    table["neuronpedia_url"] = [neuronpedia_url(neuronpedia_id, f) for f in table["feature"]]
    table = table[FEATURE_COLUMNS].sort_values(["cluster", "feature"]).reset_index(drop=True)

    for row in table.to_dict("records"):
        nx.set_node_attributes(graph, {row["feature"]: {k: _graphml_value(v) for k, v in row.items()}})
    graph_path = out_dir / "graph.graphml"
    fgraph.write_graphml(graph, graph_path)
    network = Network(matrix=used, corr=corr, graph=graph, partition=partition, kept_clusters=kept, features=table)

    n_edges = graph.number_of_edges()
    n = len(features)
    result.metrics.update({
        "network.n_features": float(n),
        "network.n_edges": float(n_edges),
        "network.density": float(n_edges / (n * (n - 1) / 2)),
        "network.n_isolated": float(nx.number_of_isolates(graph)),
        "network.n_clusters": float(len(sizes)),
        "network.n_kept_clusters": float(len(kept)),
        "network.n_kept_features": float(table["kept"].sum()),
        "network.largest_cluster_size": float(sizes.max()),
        "network.modularity": modularity,
        "network.eigenvector_converged": float(eig_method in fgraph.CONVERGED_METHODS),
    })
    result.tags["network.eigenvector_method"] = eig_method
    result.tables["tables/features.parquet"] = table
    result.files["network/graph.graphml"] = graph_path

    # ---- H1: is the structure more than chance? ----
    if cfg.n_null > 0:
        null = permutation_null(used, cfg, seed, progress, recluster=n_edges > 0, match_edges=n_edges or None,
                                engine=engine)
        edges_sum = null_summary(float(n_edges), null["n_edges"].to_numpy())
        mod_sum = null_summary(modularity, null["modularity"].to_numpy())
        matched = null_summary(modularity, null["matched_modularity"].to_numpy())
        result.metrics.update({
            "h1.null_edges_mean": edges_sum["mean"], "h1.null_edges_std": edges_sum["std"],
            "h1.edges_z": edges_sum["z"], "h1.edges_p": edges_sum["p"],
            "h1.null_modularity_mean": mod_sum["mean"], "h1.null_modularity_std": mod_sum["std"],
            "h1.modularity_z": mod_sum["z"], "h1.modularity_p": mod_sum["p"],
            "h1.null_matched_modularity_mean": matched["mean"], "h1.null_matched_modularity_std": matched["std"],
            "h1.matched_modularity_z": matched["z"], "h1.matched_modularity_p": matched["p"],
        })
        result.tables["tables/h1_null.parquet"] = null
        result.figures["plots/null_edges.png"] = plots.plot_null_distribution(
            null["n_edges"].to_numpy(), float(n_edges), "number of edges")
        if n_edges > 0:
            result.figures["plots/null_modularity.png"] = plots.plot_null_distribution(
                null["modularity"].to_numpy(), modularity, "modularity")
            result.figures["plots/null_matched_modularity.png"] = plots.plot_null_distribution(
                null["matched_modularity"].to_numpy(), modularity, "modularity",
                title=f"modularity: edge-matched null ({n_edges} strongest pairs) vs observed")
    if cfg.n_bootstrap > 0 and n_edges > 0:
        boot = bootstrap_stability(used, partition, cfg, seed, progress, engine)
        result.metrics["h1.bootstrap_ari_mean"] = float(boot["ari"].mean())
        result.metrics["h1.bootstrap_ari_std"] = float(boot["ari"].std(ddof=1)) if len(boot) > 1 else 0.0
        result.tables["tables/h1_bootstrap.parquet"] = boot

    metrics = [m for m in H1_METRICS if m != "gen_max_activation" or gen is not None]
    if len(kept) >= 2:
        tests = cluster_tests(table, metrics, clusters=kept)
        for row in tests.to_dict("records"):
            for key in ("anova_F", "anova_p", "anova_p_adj", "kruskal_H", "kruskal_p", "kruskal_p_adj"):
                result.metrics[f"h1.{row['metric']}.{key}"] = float(row[key])
        result.tables["tables/h1_tests.parquet"] = tests
    else:
        result.tags["h1.tests_skipped"] = (f"ANOVA/Kruskal need at least 2 kept clusters; found {len(kept)} "
                                           f"(clustering.min_cluster_size={cfg.min_cluster_size}).")

    # ---- figures ----
    result.figures["plots/corr_heatmap_raw.png"] = plots.plot_corr_heatmap(corr, "attribution correlation (raw)")
    result.figures["plots/corr_heatmap_sorted.png"] = plots.plot_corr_heatmap(
        corr, "attribution correlation (sorted by cluster)", partition=partition, kept=kept)
    result.figures["plots/network.png"] = plots.plot_network(graph, partition, kept, seed=seed)
    if kept:
        result.figures["plots/violins_centrality.png"] = plots.plot_cluster_violins(
            table, CENTRALITY_METRICS, kept, "centrality per kept cluster")
        result.figures["plots/violins_attribution.png"] = plots.plot_cluster_violins(
            table, [m for m in metrics if m not in CENTRALITY_METRICS], kept, "attribution metrics per kept cluster")

    if n_edges == 0:
        largest = float(np.max(np.abs(corr.to_numpy()[np.triu_indices(n, 1)])))
        skip(f"No pair of the {n} features passes clustering.threshold={cfg.threshold} "
             f"(clustering.edges={EdgeSign(cfg.edges).value}; largest |r| = {largest:.3f}). "
             "Lower clustering.threshold, or select more features.")
    elif not kept:
        skip(f"No cluster reaches clustering.min_cluster_size={cfg.min_cluster_size} (largest has {int(sizes.max())} "
             f"features). Lower clustering.min_cluster_size or clustering.threshold.")
    return network, result
