"""The graph engine: correlation -> thresholded graph -> communities -> centrality, on plain arrays.

Conventions (each one is an option or a documented choice):

* **Correlation.** Pearson (default) or Spearman (Pearson of the column ranks, average ranks for ties)
  across prompts. Constant columns have no defined correlation: callers drop them first.
* **Edges.** ``clustering.edges=abs``: an edge when ``|r| >= clustering.threshold``, weight ``|r|``.
  ``clustering.edges=positive``: an edge when ``r >= threshold``, weight ``r``. The comparison is inclusive,
  with a 1e-9 allowance for floating-point round-off (so ``r = 0.7`` computed as 0.69999999999 is an edge).
  Every edge also carries ``r`` (signed) and ``distance = 1 - weight``.
* **Weights.** ``clustering.weighted=true``: community detection, modularity and eigenvector centrality use
  ``weight``; betweenness and closeness use the path length ``distance = 1 - weight`` (strongly correlated
  features are close). ``weighted=false``: every edge counts 1 (hop counts). Degree centrality is always the
  networkx fraction of other nodes a node is joined to.
* **Communities.** greedy_modularity (networkx), louvain (networkx, seeded) or leiden (igraph + leidenalg,
  ``RBConfigurationVertexPartition`` with ``resolution_parameter=clustering.resolution``, seeded). Cluster ids are
  renumbered by size, 0 = largest (ties: lower smallest feature id first).
* **Eigenvector centrality.** Defined per connected component: on a disconnected graph the leading
  eigenvector of the whole adjacency is ambiguous (numpy's solver raises ``AmbiguousSolution``) or lives on
  one component only. Each component of 2+ nodes gets its own principal eigenvector of the (weighted)
  adjacency by a dense symmetric eigen-solver (``numpy.linalg.eigh``: exact, no convergence to fail; on a
  connected component the top eigenvalue is simple), unit norm within the component, times
  ``sqrt(n_component / n_nodes)`` so that the whole vector has unit norm and a connected graph gets exactly
  networkx's ``eigenvector_centrality``. Isolated nodes get 0. The tag ``network.eigenvector_method`` says
  which case ran. The column is never dropped.
"""

from __future__ import annotations

import logging
from typing import Optional

import networkx as nx
import numpy as np
import pandas as pd
from scipy import stats as sps

from featsweep.config import ClusteringConfig, CommunityAlgorithm, CorrelationMethod, EdgeSign

log = logging.getLogger(__name__)

EDGE_TOLERANCE = 1e-9


def correlate(values: np.ndarray, method: CorrelationMethod | str = CorrelationMethod.pearson) -> np.ndarray:
    """Feature x feature correlation of a prompts x features array whose columns are not constant."""
    values = np.asarray(values, dtype=float)
    if CorrelationMethod(method) is CorrelationMethod.spearman:
        values = sps.rankdata(values, axis=0)
    centred = values - values.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = centred / norms
        corr = z.T @ z
    np.copyto(corr, 0.0, where=np.isnan(corr))  # only reachable for constant columns, which callers drop (in place)
    np.clip(corr, -1.0, 1.0, out=corr)
    np.fill_diagonal(corr, 1.0)
    return corr


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


def choose_sources(components: list, n: int, k: int, seed: int) -> np.ndarray:
    """Sorted positions (in node order) of the sources of a sampled betweenness/closeness estimate: every node of
    a component of at most ``k`` nodes, and the ``k`` of smallest seeded random priority in a larger one. The
    priority is drawn per position, so the choice does not depend on the order the components are listed in."""
    priority = np.random.default_rng([int(seed), 4]).random(n)
    chosen = []
    for members in components:
        members = np.asarray(list(members), dtype=np.int64)
        chosen.append(members if len(members) <= k else members[np.argsort(priority[members], kind="stable")[:k]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def centralities(graph: nx.Graph, weighted: bool = True, sources: Optional[int] = None, seed: int = 0
                 ) -> tuple[pd.DataFrame, str]:
    """degree, betweenness, closeness and eigenvector centrality per node, and how eigenvector was found.

    Method: ``eigh`` (connected graph), ``eigh_per_component`` (disconnected) or ``undefined`` (no edges: every
    node gets 0). See the module docstring. ``sources``: in components of more nodes, betweenness and closeness
    are estimated from that many sources (:func:`sampled_paths`); ``None``: exact.
    """
    nodes = list(graph.nodes)
    distance = "distance" if weighted else None
    weight = "weight" if weighted else None
    degree = nx.degree_centrality(graph) if len(nodes) > 1 else {n: 0.0 for n in nodes}
    components = list(nx.connected_components(graph)) if sources is not None else []
    if sources is not None and graph.number_of_edges() and max(len(c) for c in components) > sources:
        betweenness, closeness = sampled_paths(graph, components, distance, sources, seed)
    else:
        betweenness = nx.betweenness_centrality(graph, weight=distance, normalized=True)
        closeness = nx.closeness_centrality(graph, distance=distance)
    if graph.number_of_edges() == 0:
        eigen, method = {n: 0.0 for n in nodes}, "undefined"
    else:
        eigen, method = eigenvector_per_component(graph, weight)
    frame = pd.DataFrame({
        "feature": nodes,
        "degree": [degree[n] for n in nodes],
        "betweenness": [betweenness[n] for n in nodes],
        "closeness": [closeness[n] for n in nodes],
        "eigenvector": [float(eigen[n]) for n in nodes],
    })
    return frame, method


def sampled_paths(graph: nx.Graph, components: list, distance, k: int, seed: int) -> tuple[dict, dict]:
    """Betweenness and closeness (networkx's normalisation) from the shortest paths of :func:`choose_sources`'
    sources only. Betweenness: Brandes and Pich's unbiased estimate, the sources' dependencies
    (``nx.betweenness_centrality_subset``) times ``component size / sources in it``. Closeness: ``(sources in the
    component other than the node) / (their summed distances to it)``, times ``(size - 1) / (n - 1)`` as
    ``nx.closeness_centrality`` (Eppstein and Wang's estimate). Exact where every node of a component is a source."""
    nodes = list(graph.nodes)
    n = len(nodes)
    position = {node: p for p, node in enumerate(nodes)}
    chosen = choose_sources([[position[v] for v in c] for c in components], n, k, seed)
    sources = [nodes[p] for p in chosen]
    size, in_comp = {}, {}
    source_set = set(sources)
    for members in components:
        count = sum(1 for v in members if v in source_set)
        for v in members:
            size[v], in_comp[v] = len(members), count
    subset = nx.betweenness_centrality_subset(graph, sources=sources, targets=nodes, weight=distance, normalized=False)
    scale = 2 / ((n - 1) * (n - 2)) if n > 2 else 0.0
    betweenness = {v: subset[v] * size[v] / in_comp[v] * scale for v in nodes}
    summed = dict.fromkeys(nodes, 0.0)
    for s in sources:
        lengths = (nx.single_source_dijkstra_path_length(graph, s, weight=distance) if distance
                   else nx.single_source_shortest_path_length(graph, s))
        for v, d in lengths.items():
            summed[v] += d
    closeness = {}
    for v in nodes:
        counted = in_comp[v] - (v in source_set)
        closeness[v] = (counted / summed[v] * (size[v] - 1) / (n - 1)
                        if size[v] > 1 and summed[v] > 0 and n > 1 else 0.0)
    return betweenness, closeness


def eigenvector_per_component(graph: nx.Graph, weight) -> tuple[dict, str]:
    components = list(nx.connected_components(graph))
    eigen = {n: 0.0 for n in graph.nodes}
    for members in components:
        if len(members) < 2:
            continue  # an isolated node has no neighbours to inherit importance from
        nodes = sorted(members)
        adj = nx.to_numpy_array(graph, nodelist=nodes, weight=weight)
        # connected and non-negative: the top eigenvalue is simple (Perron-Frobenius), so eigh is unambiguous
        values, vectors = np.linalg.eigh(adj)
        principal = np.abs(vectors[:, np.argmax(values)])
        share = np.sqrt(len(members) / graph.number_of_nodes())
        for node, value in zip(nodes, principal / np.linalg.norm(principal) * share):
            eigen[node] = float(value)
    return eigen, "eigh" if len(components) == 1 else "eigh_per_component"


def cluster_matrix(values: np.ndarray, features: list[int], cfg: ClusteringConfig, seed: int
                   ) -> tuple[nx.Graph, dict[int, int], float]:
    """The whole pipeline on a prompts x features array: correlate, threshold, cluster, modularity.

    Constant columns are dropped first (so a resample can be clustered safely).
    """
    values = np.asarray(values, dtype=float)
    keep = np.ptp(values, axis=0) > 0
    feats = [f for f, k in zip(features, keep) if k]
    corr = pd.DataFrame(correlate(values[:, keep], cfg.method), index=feats, columns=feats)
    graph = build_graph(corr, cfg.threshold, cfg.edges)
    partition = detect_communities(graph, cfg.algorithm, cfg.weighted, cfg.resolution, seed)
    return graph, partition, partition_modularity(graph, partition, cfg.weighted, cfg.resolution)
