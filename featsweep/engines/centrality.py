"""Centralities of the compiled graph engine: degree, betweenness, closeness and eigenvector, exact or estimated
from sampled sources, with networkx's definitions (``featsweep.engines.graph_reference`` is the reference;
``tests/engines/test_graph_engine.py`` and ``tests/hypotheses/test_h1_null.py`` compare the two).

* **Eigenvector**, per connected component: LAPACK up to ``DENSE_EIGEN_MAX`` vertices, ARPACK above, scaled to
  unit norm times sqrt(the component's share of the nodes), so one connected graph gives networkx's value.
* **Sampled sources** (``clustering.centrality_sources``): Brandes and Pich's unbiased betweenness estimate and
  Eppstein and Wang's closeness, from seeded sources (``graph_reference.choose_sources``), so the observed graph
  and every null graph of H1 compute the same statistic. One implementation serves the observed network, the H1
  tests and every null graph.
"""

from __future__ import annotations

import logging
from typing import Optional

import igraph as ig
import numpy as np
from scipy import linalg as sla
from scipy import sparse
from scipy.sparse import linalg as spla

from featsweep.engines.graph import to_networkx
from featsweep.engines.graph_reference import choose_sources

log = logging.getLogger(__name__)

DENSE_EIGEN_MAX = 400  # components up to this size use LAPACK for the eigenvector, larger ones ARPACK
CONVERGED_METHODS = ("power_iteration", "per_component_lapack", "per_component_arpack")



def _principal(adj: sparse.csr_matrix) -> tuple[np.ndarray, str]:
    n = adj.shape[0]
    if n <= DENSE_EIGEN_MAX:
        _, vec = sla.eigh(adj.toarray(), subset_by_index=[n - 1, n - 1])
        return vec[:, 0], "lapack"
    try:
        _, vec = spla.eigsh(adj, k=1, which="LA", v0=np.ones(n), tol=0, maxiter=max(1000, 20 * n))
        return vec[:, 0], "arpack"
    except spla.ArpackNoConvergence:
        log.warning("ARPACK did not converge for the eigenvector centrality of a %d-node component; used LAPACK.", n)
        _, vec = sla.eigh(adj.toarray(), subset_by_index=[n - 1, n - 1])
        return vec[:, 0], "lapack_fallback"


def eigenvector(g: ig.Graph, weighted: bool = True) -> tuple[np.ndarray, str]:
    """Per-component principal eigenvector centrality (module docstring) and the method used."""
    n = g.vcount()
    out = np.zeros(n)
    if g.ecount() == 0:
        return out, "undefined"
    pairs = np.asarray(g.get_edgelist(), dtype=np.int64)
    w = np.asarray(g.es["weight"], dtype=float) if weighted else np.ones(len(pairs))
    adj = sparse.coo_matrix((np.concatenate([w, w]), (np.concatenate([pairs[:, 0], pairs[:, 1]]),
                                                      np.concatenate([pairs[:, 1], pairs[:, 0]]))),
                            shape=(n, n)).tocsr()
    used = set()
    for members in g.connected_components():
        if len(members) < 2:
            continue
        members = np.asarray(members)
        vec, how = _principal(adj[members][:, members])
        vec = np.abs(vec)
        # unit norm over the component, times sqrt(its share of the nodes): the reference's scaling
        # (featsweep.engines.graph_reference), so one connected graph gives networkx's value and components stay comparable
        out[members] = vec / np.linalg.norm(vec) * np.sqrt(len(members) / n)
        used.add(how)
    if "lapack_fallback" in used:
        method = "per_component_arpack_lapack_fallback"
    elif "arpack" in used:
        method = "per_component_arpack"
    else:
        method = "per_component_lapack"
    return out, method


CENTRALITIES = ("degree", "betweenness", "closeness", "eigenvector")


def needs_estimate(g: ig.Graph, sources: Optional[int]) -> bool:
    """Whether :func:`centralities` with ``sources`` estimates (some component has more than ``sources`` vertices)."""
    if sources is None or g.ecount() == 0:
        return False
    return max(len(c) for c in g.connected_components()) > sources


def distance_sums(g: ig.Graph, sources: np.ndarray, weighted: bool, block: int = 256) -> np.ndarray:
    """Per vertex, the summed shortest-path lengths from ``sources`` in its component (edge ``distance``, or hops
    when not ``weighted``). scipy's Dijkstra on the CSR adjacency, ``block`` sources at a time: it returns the
    distances as an array, about 3x faster here than igraph's ``distances`` with its list of lists."""
    from scipy.sparse import csgraph

    adj = g.get_adjacency_sparse(attribute="distance" if weighted else None)
    total = np.zeros(g.vcount())
    for start in range(0, len(sources), block):
        d = csgraph.dijkstra(adj, directed=True, indices=sources[start:start + block])  # symmetric: undirected
        d[~np.isfinite(d)] = 0.0  # other components: not counted
        total += d.sum(axis=0)
    return total


def centralities(g: ig.Graph, weighted: bool = True, which=CENTRALITIES, sources: Optional[int] = None,
                 seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """degree, betweenness, closeness and eigenvector centrality per vertex (networkx's definitions, see the
    module docstring), and the eigenvector method. ``which``: the ones to compute (the nulls ask only for those
    their statistics use; shortest paths are the cost).

    ``sources`` (``clustering.centrality_sources``): in a component of more than ``sources`` vertices,
    betweenness and closeness are estimated from the shortest paths of ``sources`` seeded random vertices of it
    (:func:`choose_sources`) instead of all of them: ``O(sources * m)`` instead of ``O(n * m)``. Betweenness is
    Brandes and Pich's unbiased estimate (the sources' dependencies times ``component size / sources``);
    closeness uses the mean distance from the component's sources (Eppstein and Wang). Components of at most
    ``sources`` vertices, and ``sources=None``, give the exact values."""
    n = g.vcount()
    zeros = np.zeros(n)
    out = {}
    if "degree" in which:
        pairs = np.asarray(g.get_edgelist(), dtype=np.int64).reshape(-1, 2)
        out["degree"] = np.bincount(pairs.ravel(), minlength=n).astype(float) / (n - 1) if n > 1 else zeros
    dist = g.es["distance"] if (weighted and g.ecount()) else None
    paths = [k for k in ("betweenness", "closeness") if k in which]
    if paths and dist is not None and min(dist) <= 0:
        # igraph's Dijkstra needs positive lengths; an edge with r = 1 has length 0. Use networkx's exact
        # definition (rare: only features whose attributions are exact affine copies of each other).
        import networkx as nx

        log.warning("Some edges have distance 0 (r = 1): betweenness and closeness computed with networkx.")
        graph = to_networkx(list(range(n)), g)
        if "betweenness" in which:
            btw = nx.betweenness_centrality(graph, weight="distance", normalized=True)
            out["betweenness"] = np.array([btw[v] for v in range(n)])
        if "closeness" in which:
            clo = nx.closeness_centrality(graph, distance="distance")
            out["closeness"] = np.array([clo[v] for v in range(n)])
    elif paths and g.ecount():
        components = g.connected_components()
        comp = np.asarray(components.membership)
        size = np.bincount(comp)[comp].astype(float)  # size of each vertex's component
        estimate = sources is not None and size.max() > sources  # needs_estimate, from the components at hand
        src = choose_sources(list(components), n, int(sources), seed) if estimate else np.arange(n)
        in_comp = np.bincount(comp[src], minlength=comp.max() + 1)[comp]  # sources in each vertex's component
        if "betweenness" in which:
            if estimate:  # subset betweenness: the sources' dependencies (each unordered pair once, as the exact)
                raw = np.asarray(g.betweenness(directed=False, weights=dist, sources=src.tolist()), dtype=float)
                raw *= size / in_comp
            else:
                raw = np.asarray(g.betweenness(directed=False, weights=dist), dtype=float)
            out["betweenness"] = raw * 2 / ((n - 1) * (n - 2)) if n > 2 else zeros
        if "closeness" in which:
            # (sources in the vertex's component, itself not counted) / (their summed distances to it); with
            # every vertex a source this is networkx's (k - 1) / sum(d)
            counted = in_comp - np.isin(np.arange(n), src)
            with np.errstate(invalid="ignore", divide="ignore"):
                close = counted / distance_sums(g, src, dist is not None)
            out["closeness"] = np.where(np.isfinite(close) & (size > 1), close, 0.0) * (size - 1) / max(n - 1, 1)
    else:
        out.update({k: zeros for k in paths})
    method = "not_computed"
    if "eigenvector" in which:
        out["eigenvector"], method = eigenvector(g, weighted)
    return {k: out[k] for k in CENTRALITIES if k in which}, method
