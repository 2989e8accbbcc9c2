"""The dictionary graph: latents joined where their corpus co-occurrence reaches an edge threshold, and its
communities.

* **Edges** are the stored pairs (those that co-fired) with weight ``>= threshold`` (inclusive, as the task
  network's); the threshold must be positive, so pairs that never co-fired (Jaccard 0, phi < 0) cannot be edges.
* **auto** (Clarke et al.'s search): the size of the largest connected component can only shrink as the
  threshold rises (edges only disappear). :func:`auto_threshold` binary-searches the distinct edge weights
  for the LOWEST threshold whose largest component has at most ``max_size`` latents, i.e. the most edges
  that keep it within the target; it fails when that component is smaller than ``min_size`` (the size jumps
  over the target range: one more edge weight joins two big components).
* **Communities** on the latents that have at least one edge, by ``featsweep.graph_engine.communities``
  (greedy modularity, Louvain or Leiden, seeded); isolated latents belong to none (community ``-1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from featsweep.engines import graph as graph_engine
from featsweep.errors import FeatsweepError


def edges_at(weights: sparse.csr_matrix, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, w)`` of the stored pairs with ``w >= threshold`` (upper triangle, row-major order)."""
    coo = weights.tocoo()
    keep = coo.data >= threshold - graph_engine.EDGE_TOLERANCE
    order = np.lexsort((coo.col[keep], coo.row[keep]))
    return coo.row[keep][order], coo.col[keep][order], coo.data[keep][order]


def largest_component(n: int, i: np.ndarray, j: np.ndarray) -> int:
    """Nodes in the largest connected component of the graph on ``n`` nodes with edges ``(i, j)``
    (1 without edges)."""
    if not len(i):
        return 1 if n else 0
    adj = sparse.coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(adj, directed=False)
    return int(np.bincount(labels).max())


def component_size_at(weights: sparse.csr_matrix, threshold: float) -> int:
    """Largest component at ``threshold``, straight from the CSR pattern (no edge list: the search calls this
    ~log2(distinct weights) times on up to millions of pairs)."""
    adj = weights.copy()
    adj.data = (adj.data >= threshold - graph_engine.EDGE_TOLERANCE).astype(np.int8)
    adj.eliminate_zeros()
    if not adj.nnz:
        return 1 if weights.shape[0] else 0
    _, labels = connected_components(adj, directed=False)
    return int(np.bincount(labels).max())


def auto_threshold(weights: sparse.csr_matrix, min_size: int, max_size: int) -> tuple[float, int]:
    """The lowest distinct positive weight whose graph has a largest component of at most ``max_size``
    latents, and that size; a FeatsweepError when that size is below ``min_size`` (not reachable)."""
    values = np.unique(weights.data[weights.data > 0])
    if not len(values):
        raise FeatsweepError("No pair of latents co-occurs in the corpus, so no edge threshold can give a component "
                             "of cooccurrence.auto_min_size latents: count on more text, or lower "
                             "cooccurrence.activation_threshold.")
    lo, hi = 0, len(values) - 1  # find the first index whose size fits (sizes are non-increasing in the index)
    if component_size_at(weights, values[hi]) > max_size:
        raise FeatsweepError(f"Even at the largest weight ({values[hi]:.4g}) the largest component has more than "
                             f"cooccurrence.auto_max_size={max_size} latents: raise cooccurrence.auto_max_size, or "
                             "give cooccurrence.edge_threshold as a number.")
    while lo < hi:
        mid = (lo + hi) // 2
        if component_size_at(weights, values[mid]) <= max_size:
            hi = mid
        else:
            lo = mid + 1
    size = component_size_at(weights, values[lo])
    if size < min_size:
        below = component_size_at(weights, values[lo - 1]) if lo > 0 else size
        raise FeatsweepError(
            f"No edge threshold gives a largest component of {min_size}-{max_size} latents: at "
            f"{values[lo]:.4g} it has {size}, one step lower ({values[lo - 1] if lo else values[lo]:.4g}) {below}. "
            f"Widen the range (cooccurrence.auto_min_size={size} or cooccurrence.auto_max_size={below}), or give "
            "cooccurrence.edge_threshold as a number.")
    return float(values[lo]), size


@dataclass
class DictionaryGraph:
    """The thresholded co-occurrence graph of the whole dictionary and its communities."""

    threshold: float
    i: np.ndarray  # edges (latent ids, i < j)
    j: np.ndarray
    w: np.ndarray
    community: np.ndarray  # [d_sae]: community id (0 = largest) or -1 for latents without an edge
    largest_component: int
    modularity: float


def build_dictionary_graph(weights: sparse.csr_matrix, threshold: float, algorithm, resolution: float,
                           seed: int, largest: Optional[int] = None) -> DictionaryGraph:
    """Edges at ``threshold`` and the communities of the latents that have one."""
    n = weights.shape[0]
    i, j, w = edges_at(weights, threshold)
    nodes = np.unique(np.concatenate([i, j]))
    community = np.full(n, -1, np.int64)
    modularity = float("nan")
    if len(nodes):
        index = np.full(n, -1, np.int64)
        index[nodes] = np.arange(len(nodes))
        g = graph_engine.build(len(nodes), index[i], index[j], w, "positive", full=False)
        membership = graph_engine.communities(g, algorithm, True, resolution, seed, features=list(nodes))
        community[nodes] = membership
        modularity = graph_engine.modularity(g, membership, True, resolution)
    size = largest if largest is not None else largest_component(n, i, j)
    return DictionaryGraph(float(threshold), i, j, w, community, size, modularity)


def community_table(graph: DictionaryGraph, labels: dict[int, str], n_listed: int = 8):
    """One row per community: size, edges, density (edges / possible pairs), mean edge weight, and its
    members with their logit-lens labels (the ``n_listed`` best-connected first)."""
    import pandas as pd

    rows = []
    same = graph.community[graph.i] == graph.community[graph.j]
    degree = np.bincount(np.concatenate([graph.i, graph.j]), minlength=len(graph.community))
    for cid in range(int(graph.community.max()) + 1 if len(graph.i) else 0):
        members = np.flatnonzero(graph.community == cid)
        inside = same & (graph.community[graph.i] == cid)
        k = len(members)
        top = members[np.lexsort((members, -degree[members]))][:n_listed]
        rows.append({"community": cid, "size": k, "n_edges": int(inside.sum()),
                     "density": float(inside.sum() / (k * (k - 1) / 2)) if k > 1 else float("nan"),
                     "mean_weight": float(graph.w[inside].mean()) if inside.any() else float("nan"),
                     "latents": " ".join(str(int(m)) for m in members),
                     "labels": "; ".join(f"{int(m)}: {labels.get(int(m), '')}" for m in top)})
    return pd.DataFrame(rows, columns=["community", "size", "n_edges", "density", "mean_weight", "latents", "labels"])
