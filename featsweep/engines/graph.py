"""The compiled graph engine of the network stage: correlation -> threshold -> igraph graph -> communities,
modularity, as pure functions of arrays; its centralities are in :mod:`featsweep.engines.centrality` (their
definitions are listed below with the rest, since the reference defines them together).

Why igraph (python-igraph, already a dependency through leidenalg): its C core has the three community
algorithms featsweep offers (``community_fastgreedy`` is the Clauset-Newman-Moore greedy modularity of
networkx's ``greedy_modularity_communities``; ``community_multilevel`` is Louvain; leidenalg runs on igraph
graphs), weighted betweenness/closeness (Brandes/Dijkstra) and modularity, installs as a wheel everywhere and
is what leidenalg needs anyway. networkit would add a second graph library without a Leiden partition of the
``RBConfiguration`` kind, and graph-tool has no pip wheel.

Every metric keeps the meaning the networkx reference (``featsweep.stages.network`` with ``engine="networkx"``) gives
it; ``tests/engines/test_graph_engine.py`` compares the two:

* **Edges.** :func:`threshold_edges` gives the same upper-triangle pairs, in the same (row-major) order, as
  ``network.edge_list``: ``|r|`` (``abs``) or ``r`` (``positive``) ``>= threshold - 1e-9``; weight ``|r|`` or ``r``,
  ``distance = max(0, 1 - weight)``. It works in blocks of rows, so thousands of features need no
  ``n^2``-sized index arrays.
* **greedy_modularity.** igraph's CNM merge sequence, cut where networkx stops (before the first merge that
  lowers modularity; igraph's own cut is the largest modularity anywhere in the sequence). Identical
  partitions, except where merges of equal gain (unweighted graphs) are broken differently. igraph's CNM has no
  resolution parameter: with ``resolution != 1`` networkx's greedy runs on this graph instead (logged).
* **louvain.** ``community_multilevel`` with igraph's random generator seeded from ``seed`` (a private
  ``random.Random``, restored afterwards). Not the same random stream as networkx's Louvain, so partitions may
  differ where Louvain's order matters; on clear structure they agree.
* **leiden.** leidenalg ``RBConfigurationVertexPartition`` on the same graph, as before.
* **degree**: fraction of the other nodes a node is joined to (networkx ``degree_centrality``).
* **betweenness**: igraph counts each unordered pair once; networkx's normalised value is ``2 b / ((n-1)(n-2))``.
* **closeness**: networkx's (Wasserman-Faust) definition on disconnected graphs:
  ``(k-1)/sum(d) * (k-1)/(n-1)`` with ``k`` the size of the node's component; 0 for an isolated node. The
  distance sums come from scipy's Dijkstra (:func:`distance_sums`).
* **sampled betweenness and closeness** (``sources=``, for the H1 cluster tests): from the shortest paths of a
  seeded sample of source nodes in each component larger than ``sources`` (:func:`centralities`); the networkx
  reference is ``featsweep.engines.graph_reference.sampled_paths`` (``nx.betweenness_centrality_subset`` and networkx's Dijkstra).
* **eigenvector**: the principal (Perron) eigenvector of the weighted adjacency **of each connected
  component**, unit Euclidean norm within the component; isolated nodes 0. On a graph with one component of
  more than one node this is networkx's ``eigenvector_centrality`` (which on several components converges to
  the dominant component only, or not at all). Computed by LAPACK (``scipy.linalg.eigh``, largest eigenpair)
  for components up to :data:`DENSE_EIGEN_MAX` nodes and by ARPACK (``scipy.sparse.linalg.eigsh``) above,
  with LAPACK as the fallback if ARPACK does not converge. The method is returned (and tagged by the stage):
  ``per_component_lapack``, ``per_component_arpack``, ``per_component_arpack_lapack_fallback`` or
  ``undefined`` (no edges).

The nulls and the bootstrap use :func:`cluster_values` / :func:`top_pairs`: edges, communities and modularity
only; no centralities and no networkx graph.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Optional

import igraph as ig
import numpy as np

# one definition of the correlation and of the estimate's sources, shared with the networkx reference
from featsweep.engines.graph_reference import choose_sources, correlate  # noqa: F401

log = logging.getLogger(__name__)

EDGE_TOLERANCE = 1e-9
# eigenvector methods that found the principal eigenvector as asked
_ROW_BLOCK = 512


def _value(option) -> str:
    return str(option.value if hasattr(option, "value") else option)


# ---- correlation and edges ----------------------------------------------------------------------------


def _score(block: np.ndarray, edges) -> np.ndarray:
    return np.abs(block) if _value(edges) == "abs" else block


def threshold_edges(corr: np.ndarray, threshold: float, edges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle ``(i, j, r)`` of the pairs passing the threshold (inclusive, 1e-9 allowance), in
    row-major order (the order of ``np.triu_indices``)."""
    n = corr.shape[0]
    cut = threshold - EDGE_TOLERANCE
    parts_i, parts_j = [], []
    for start in range(0, n, _ROW_BLOCK):
        stop = min(n, start + _ROW_BLOCK)
        block = corr[start:stop, start + 1:]  # columns > start; mask the lower part inside the block
        mask = _score(block, edges) >= cut
        mask &= np.arange(start + 1, n)[None, :] > np.arange(start, stop)[:, None]
        bi, bj = np.nonzero(mask)
        parts_i.append(bi + start)
        parts_j.append(bj + start + 1)
    i = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
    j = np.concatenate(parts_j) if parts_j else np.zeros(0, np.int64)
    return i, j, corr[i, j]


def _pairs_at_least(corr: np.ndarray, cut: float, edges) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangle ``(i, j)`` with score ``>= cut`` exactly (no tolerance), in row-major order."""
    n = corr.shape[0]
    parts_i, parts_j = [], []
    for start in range(0, n, _ROW_BLOCK):
        stop = min(n, start + _ROW_BLOCK)
        mask = _score(corr[start:stop, start + 1:], edges) >= cut
        mask &= np.arange(start + 1, n)[None, :] > np.arange(start, stop)[:, None]
        bi, bj = np.nonzero(mask)
        parts_i.append(bi + start)
        parts_j.append(bj + start + 1)
    return np.concatenate(parts_i).astype(np.int64), np.concatenate(parts_j).astype(np.int64)


def count_edges(corr: np.ndarray, threshold: float, edges) -> int:
    """Number of pairs passing the threshold (what :func:`threshold_edges` would return), without indices."""
    n = corr.shape[0]
    cut = threshold - EDGE_TOLERANCE
    total = 0
    for start in range(0, n, _ROW_BLOCK):
        stop = min(n, start + _ROW_BLOCK)
        mask = _score(corr[start:stop, start + 1:], edges) >= cut
        mask &= np.arange(start + 1, n)[None, :] > np.arange(start, stop)[:, None]
        total += int(mask.sum())
    return total


def top_pairs(corr: np.ndarray, n_edges: int, edges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n_edges`` strongest upper-triangle pairs by ``|r|`` (``abs``) or ``r`` (``positive``), strongest
    first, ties in row-major order (as a stable sort of ``network.top_pairs_graph``); pairs scoring <= 0
    are dropped. ``argpartition``, not a full sort, or (few pairs of many) a sampled cut and one blocked pass."""
    n = corr.shape[0]
    n_pairs = n * (n - 1) // 2
    k = int(min(max(n_edges, 0), n_pairs))
    if k == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    if k < n_pairs // 20 and n > 64:
        # Few edges asked of many pairs: estimate a cut below the k-th largest score from a fixed sample of
        # pairs, keep the pairs at or above it (one blocked pass, row-major order) and choose among them. When
        # at least k pairs pass, every pair the full selection would choose passes too, so the result is the same.
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, n, size=(2, min(n_pairs, 200_000)))
        sample = _score(corr[np.minimum(a, b), np.maximum(a, b)][a != b], edges)
        for share in (2.0, 8.0):
            q = 1.0 - min(1.0, share * k / n_pairs)
            cut = float(np.quantile(sample, q)) if len(sample) else -np.inf
            i, j = _pairs_at_least(corr, cut, edges)
            if len(i) >= k:
                s = _score(corr[i, j], edges)
                chosen = np.lexsort((i * n + j, -s))[:k]  # strongest first, ties in row-major order
                chosen = chosen[s[chosen] > 0]
                return i[chosen], j[chosen], corr[i[chosen], j[chosen]]
    score = np.where(np.tri(n, dtype=bool), -np.inf, _score(corr, edges))  # upper triangle only
    flat = score.ravel()
    if k < n_pairs:
        kth = flat[np.argpartition(flat, -k)[-k]]  # the k-th largest score
        above = np.flatnonzero(flat > kth)
        ties = np.flatnonzero(flat == kth)[: k - len(above)]
        chosen = np.concatenate([above, ties])
    else:
        chosen = np.flatnonzero(np.isfinite(flat))
    chosen = chosen[np.lexsort((chosen, -flat[chosen]))]  # strongest first, ties by position
    chosen = chosen[flat[chosen] > 0]
    i, j = np.divmod(chosen, n)
    return i, j, corr[i, j]


# ---- graphs -----------------------------------------------------------------------------------------------


def build(n: int, i: np.ndarray, j: np.ndarray, r: np.ndarray, edges, full: bool = True) -> ig.Graph:
    """igraph graph on nodes ``0..n-1`` with edge attributes ``weight`` (``|r|`` or ``r``), ``r`` and
    ``distance = max(0, 1 - weight)``, edges in the given order. ``full=False``: ``weight`` only (enough for
    communities and modularity)."""
    r = np.asarray(r, dtype=float)
    weight = np.abs(r) if _value(edges) == "abs" else r
    g = ig.Graph(n=int(n))
    # from the array, not a list of pairs: 100k small lists cost little alone but trigger full garbage
    # collections over everything alive (seconds per draw beside a large networkx graph)
    g.add_edges(np.column_stack([np.asarray(i, np.int64), np.asarray(j, np.int64)]))
    g.es["weight"] = weight.tolist()
    if full:
        g.es["r"] = r.tolist()
        g.es["distance"] = np.maximum(0.0, 1.0 - weight).tolist()
    return g


def from_networkx(graph) -> tuple[ig.Graph, list]:
    """igraph copy of a networkx graph built by ``network.build_graph`` (weight/r/distance edge attributes);
    returns the graph and the node list (igraph vertex k = ``nodes[k]``)."""
    nodes = list(graph.nodes)
    index = {node: k for k, node in enumerate(nodes)}
    data = list(graph.edges(data=True))
    g = ig.Graph(n=len(nodes), edges=[(index[a], index[b]) for a, b, _ in data])
    for attr in ("weight", "r", "distance"):
        g.es[attr] = [float(d.get(attr, 1.0 if attr == "weight" else 0.0)) for _, _, d in data]
    return g, nodes


def to_networkx(features: list[int], g: ig.Graph):
    """networkx graph with the feature ids as nodes (every node, isolated ones included) and the edge
    attributes of ``g`` (for graphml, plots and downstream code)."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(features)
    if g.ecount():
        w, r, d = g.es["weight"], g.es["r"], g.es["distance"]
        graph.add_edges_from((features[a], features[b], {"weight": w[k], "r": r[k], "distance": d[k]})
                             for k, (a, b) in enumerate(g.get_edgelist()))
    return graph


def rewire(g: ig.Graph, seed: int) -> ig.Graph:
    """A degree-preserving random rewiring of a copy of ``g``: ``10 * n_edges`` double-edge swap trials
    (igraph's ``Graph.rewire``, simple graphs only; a trial that would make a loop or a multi-edge is skipped,
    so a near-complete graph keeps most of its edges), then the edge attributes of ``g`` dealt out to the new
    edges by a random permutation: the weight distribution is kept, its link to the structure broken.
    Seeded: igraph draws from a private ``random.Random`` (restored afterwards), the permutation from numpy.
    ``featsweep.hypotheses.rewired_null.rewire_reference`` is the networkx reference (``nx.double_edge_swap``; another random
    stream, so the same seed gives another graph of the same degrees)."""
    rng = np.random.default_rng(seed)
    out = g.copy()
    m = out.ecount()
    if m >= 2 and out.vcount() >= 4:
        with _SeededRNG(int(rng.integers(2**31))):
            out.rewire(n=10 * m, allowed_edge_types="simple")
    order = rng.permutation(m)
    for attr in g.es.attributes():
        out.es[attr] = np.asarray(g.es[attr])[order].tolist()
    return out


# ---- communities and modularity ----------------------------------------------------------------------------


def relabel(membership, features: Optional[list] = None) -> np.ndarray:
    """Renumber clusters by size, 0 = largest, ties: the cluster whose smallest feature id is lower first."""
    membership = np.asarray(membership, dtype=np.int64)
    if len(membership) == 0:
        return membership
    keys = np.asarray(features if features is not None else np.arange(len(membership)), dtype=float)
    _, inverse = np.unique(membership, return_inverse=True)
    sizes = np.bincount(inverse)
    smallest = np.full(len(sizes), np.inf)
    np.minimum.at(smallest, inverse, keys)
    order = np.lexsort((smallest, -sizes))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse]


class _SeededRNG:
    """igraph draws from Python's ``random`` module by default; use a private seeded generator instead."""

    def __init__(self, seed: int):
        self.rng = random.Random(int(seed))

    def __enter__(self):
        ig.set_random_number_generator(self.rng)

    def __exit__(self, *exc):
        ig.set_random_number_generator(random)


def _greedy(g: ig.Graph, weights) -> list[int]:
    """CNM greedy modularity, stopped where networkx stops: before the first merge that lowers modularity
    (merges of zero gain, up to 1e-12 of round-off, go on). igraph's own cut (the largest modularity anywhere in
    the merge sequence) can lie later, after a dip."""
    merges, qs = ig.GraphBase.community_fastgreedy(g, weights)
    steps = len(merges)
    for k in range(len(merges)):
        if qs[k + 1] - qs[k] < -1e-12:
            steps = k
            break
    return ig.community_to_membership(merges, g.vcount(), steps)


def communities(g: ig.Graph, algorithm, weighted: bool = True, resolution: float = 1.0, seed: int = 0,
                features: Optional[list] = None) -> np.ndarray:
    """Cluster id per vertex (0 = largest, see :func:`relabel`); a graph without edges gives singletons."""
    algorithm = _value(algorithm)
    n = g.vcount()
    if g.ecount() == 0:
        return relabel(np.arange(n), features)
    weights = g.es["weight"] if weighted else None
    if algorithm == "greedy_modularity":
        if resolution != 1.0:
            import networkx as nx

            log.info("igraph's greedy modularity has no resolution parameter; running networkx's for "
                     "clustering.resolution=%s.", resolution)
            graph = nx.Graph()
            graph.add_nodes_from(range(n))
            graph.add_weighted_edges_from((a, b, w) for (a, b), w in zip(g.get_edgelist(), g.es["weight"]))
            found = nx.community.greedy_modularity_communities(graph, weight="weight" if weighted else None,
                                                               resolution=resolution)
            membership = np.empty(n, np.int64)
            for cid, members in enumerate(found):
                membership[list(members)] = cid
        else:
            membership = _greedy(g, weights)
    elif algorithm == "louvain":
        with _SeededRNG(seed):
            membership = g.community_multilevel(weights=weights, resolution=resolution).membership
    elif algorithm == "leiden":
        import leidenalg

        part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights=weights,
                                        resolution_parameter=resolution, seed=int(seed) % (2**31 - 1),
                                        n_iterations=-1)
        membership = part.membership
    else:
        raise ValueError(f"unknown community algorithm {algorithm!r}")
    return relabel(membership, features)


def modularity(g: ig.Graph, membership, weighted: bool = True, resolution: float = 1.0) -> float:
    """Modularity of the partition (networkx's definition; NaN for a graph without edges)."""
    if g.ecount() == 0:
        return float("nan")
    return float(g.modularity(list(np.asarray(membership, dtype=np.int64)), weights=g.es["weight"] if weighted
                              else None, resolution=resolution))


@dataclass
class Clustered:
    """What a null or bootstrap repeat needs: no centralities, no networkx graph."""

    keep: np.ndarray  # bool [n_features]: columns that vary (the others are dropped before correlating)
    n_edges: int
    membership: np.ndarray  # cluster id per kept column (0 = largest)
    modularity: float  # NaN without edges
    graph: Optional[ig.Graph] = None  # the threshold graph (weights only), for re-clustering its kept clusters


def cluster_values(values: np.ndarray, method, threshold: float, edges, algorithm, weighted: bool,
                   resolution: float, seed: int, features: Optional[list] = None) -> Clustered:
    """Correlate (constant columns dropped), threshold, cluster and score a prompts x features array."""
    values = np.asarray(values, dtype=float)
    keep = np.ptp(values, axis=0) > 0 if values.shape[0] else np.zeros(values.shape[1], bool)
    corr = correlate(values[:, keep], method)
    i, j, r = threshold_edges(corr, threshold, edges)
    g = build(int(keep.sum()), i, j, r, edges, full=False)
    feats = None if features is None else [f for f, k in zip(features, keep) if k]
    membership = communities(g, algorithm, weighted, resolution, seed, feats)
    return Clustered(keep=keep, n_edges=g.ecount(), membership=membership,
                     modularity=modularity(g, membership, weighted, resolution), graph=g)


def kept_clusters(membership: np.ndarray, min_size: int) -> list[int]:
    """Cluster ids (of a :func:`relabel` membership) with at least ``min_size`` members, ascending."""
    sizes = np.bincount(np.asarray(membership, dtype=np.int64)) if len(membership) else np.zeros(0, np.int64)
    return [int(c) for c in np.flatnonzero(sizes >= min_size)]


def subgraph(g: ig.Graph, members: np.ndarray) -> ig.Graph:
    """The subgraph induced by the sorted vertex ids ``members`` (vertex k = ``members[k]``), with ``weight``
    and, where ``g`` has them, ``r`` and ``distance``; edges in ``g``'s order."""
    pairs = np.asarray(g.get_edgelist(), dtype=np.int64).reshape(-1, 2)
    inside = np.isin(pairs, members).all(axis=1)
    local = np.searchsorted(members, pairs[inside])
    sub = ig.Graph(n=len(members), edges=local.tolist())
    for attr in g.es.attributes():
        sub.es[attr] = np.asarray(g.es[attr], dtype=float)[inside].tolist()
    return sub


def kept_membership(g: ig.Graph, membership: np.ndarray, min_size: int, recluster: bool, algorithm, weighted: bool,
                    resolution: float, seed: int, features: Optional[list] = None) -> tuple[np.ndarray, list[int]]:
    """The partition H1 tests and its kept clusters (size >= ``min_size``): ``membership`` as it is, or, with
    ``recluster`` (``clustering.recluster_kept``), the kept clusters' induced subgraph clustered again on its
    own and the size filter applied again; renumbered by :func:`relabel`. ``featsweep.hypotheses.rewired_null.kept_partition`` is the
    networkx reference."""
    membership = np.asarray(membership, dtype=np.int64)
    kept = kept_clusters(membership, min_size)
    if not (recluster and kept):
        return membership, kept
    members = np.flatnonzero(np.isin(membership, kept))
    feats = None if features is None else [features[k] for k in members]
    sub = communities(subgraph(g, members), algorithm, weighted, resolution, seed, feats)
    merged = membership + len(members)  # the clusters left out keep their own group, apart from the new ones
    merged[members] = sub
    merged = relabel(merged, features)
    return merged, kept_clusters(merged, min_size)


def matched_modularity(corr: np.ndarray, n_edges: int, edges, algorithm, weighted: bool, resolution: float,
                       seed: int, features: Optional[list] = None) -> float:
    """Modularity of the reclustered graph of the ``n_edges`` strongest pairs of ``corr`` (edge-matched null)."""
    i, j, r = top_pairs(corr, n_edges, edges)
    g = build(corr.shape[0], i, j, r, edges, full=False)
    membership = communities(g, algorithm, weighted, resolution, seed, features)
    return modularity(g, membership, weighted, resolution)
