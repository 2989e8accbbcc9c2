"""H1's graph-aware nulls: the rewired null, the partition H1 tests, and the machinery every null draw shares.

* :func:`kept_partition`: the partition H1 tests and its kept clusters (the networkx reference; the engine's is
  ``featsweep.engines.graph.kept_membership``).
* :func:`rewired_null`: ``clustering.n_rewire`` degree-preserving rewirings of the observed graph (igraph's
  ``Graph.rewire``; :func:`rewire_reference` is networkx's), each reclustered and its cluster tests recomputed with
  the same centralities as the observed graph (``featsweep.engines.centrality``, one implementation).
* :func:`null_pvalues`: ``(1 + #{null >= observed}) / (1 + n_valid)`` per metric, Bonferroni over the family.
* :func:`graph_cluster_tests`: the F and H of every metric on one null graph (edge-matched or continuum draws).
* :func:`run_draws` / :func:`draw_jobs`: draws in order, in process or on a process pool, with the same numbers.

The reasoning behind the nulls is in :mod:`featsweep.hypotheses.h1`.
"""

from __future__ import annotations

import os
from typing import Optional

import igraph as ig
import networkx as nx
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from featsweep.config import ClusteringConfig
from featsweep.engines import centrality
from featsweep.engines import graph as graph_engine
from featsweep.engines.graph_reference import centralities, detect_communities
from featsweep.hypotheses.stats import adjust_pvalues, anova_kruskal_columns
from featsweep.results import Network


# below this many features a draw costs less than handing it to a worker process
PARALLEL_MIN_FEATURES = 400


def draw_jobs(cfg: ClusteringConfig, n_features: int) -> int:
    """Worker processes for the null and bootstrap draws: ``clustering.n_jobs``, or with ``null`` every core
    for networks of at least :data:`PARALLEL_MIN_FEATURES` features and 1 (in process) below."""
    if cfg.n_jobs is not None:
        return max(1, int(cfg.n_jobs))
    return (os.cpu_count() or 1) if n_features >= PARALLEL_MIN_FEATURES else 1


def run_draws(tasks, n_tasks: int, n_jobs: int, desc: str, progress: bool) -> list:
    """Run ``(function, *args)`` tasks in order, in process (``n_jobs=1``) or on a joblib process pool. The
    tasks are generated lazily in the caller's order (joblib keeps ``2 * n_jobs`` in flight), so the random
    draws made while generating them are those of the serial loop, and results come back in task order."""
    if n_jobs <= 1 or n_tasks < 2:
        return [task[0](*task[1:]) for task in tqdm(tasks, total=n_tasks, desc=desc, leave=False,
                                                     disable=not progress)]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=min(n_jobs, n_tasks), backend="loky")(delayed(task[0])(*task[1:]) for task in tasks)


def kept_partition(graph: nx.Graph, cfg: ClusteringConfig, seed: int, partition: Optional[dict[int, int]] = None
                   ) -> tuple[dict[int, int], list[int]]:
    """The partition H1 tests, and its kept clusters (size >= ``clustering.min_cluster_size``).

    Communities of ``graph`` (or the given first-pass ``partition``); with ``clustering.recluster_kept`` the
    subgraph of the kept clusters' features is clustered again on its own (as the blog's notebook does) and the
    size filter applied again. Cluster ids are renumbered by size, 0 = largest (ties: lower smallest feature).
    """
    if partition is None:
        partition = detect_communities(graph, cfg.algorithm, cfg.weighted, cfg.resolution, seed)
    kept = _kept(partition, cfg.min_cluster_size)
    if not (cfg.recluster_kept and kept):
        return partition, kept
    members = [f for f, c in partition.items() if c in kept]
    sub = detect_communities(graph.subgraph(members).copy(), cfg.algorithm, cfg.weighted, cfg.resolution, seed)
    groups: dict[tuple, list[int]] = {}
    for f, c in sub.items():
        groups.setdefault(("sub", c), []).append(f)
    for f, c in partition.items():
        if c not in kept:
            groups.setdefault(("old", c), []).append(f)
    ordered = sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))
    partition = {int(f): cid for cid, g in enumerate(ordered) for f in g}
    return partition, _kept(partition, cfg.min_cluster_size)


def _kept(partition: dict[int, int], min_size: int) -> list[int]:
    sizes = pd.Series(partition, dtype=int).value_counts()
    return sorted(int(c) for c, size in sizes.items() if size >= min_size)


def rewire_reference(graph: nx.Graph, seed: int) -> nx.Graph:
    """The networkx reference of :func:`featsweep.engines.graph.rewire`: ``10 * n_edges`` double-edge swaps
    (``nx.double_edge_swap``; fewer where no more are possible, e.g. a near-complete graph), then the observed
    edge attributes dealt out to the edges at random, so the weight distribution is kept and its link to the
    structure is broken."""
    rng = np.random.default_rng(seed)
    rewired = graph.copy()
    attrs = [dict(d) for _, _, d in graph.edges(data=True)]
    n_edges = len(attrs)
    if n_edges >= 2 and rewired.number_of_nodes() >= 4:
        try:
            nx.double_edge_swap(rewired, nswap=10 * n_edges, max_tries=100 * n_edges, seed=int(rng.integers(2**31)))
        except nx.NetworkXException:
            pass  # as many swaps as the graph allows
    for (a, b), k in zip(list(rewired.edges), rng.permutation(n_edges)):
        rewired.edges[a, b].clear()
        rewired.edges[a, b].update(attrs[k])
    return rewired


def rewired_null(network: Network, cfg: ClusteringConfig, seed: int, metrics: list[str], progress: bool = True,
                 engine: str = "igraph", n_jobs: int = 1) -> pd.DataFrame:
    """ANOVA F and Kruskal H of every metric across the kept clusters of ``clustering.n_rewire`` rewired,
    reclustered graphs (see the module docstring). One row per draw and metric (F, H NaN when the draw has
    fewer than 2 kept clusters). ``engine="igraph"``: rewiring, communities and centralities on
    :mod:`featsweep.engines.graph` (only the centralities among ``metrics``); ``"networkx"``: the reference
    (:func:`rewire_reference`, :func:`kept_partition`, ``featsweep.engines.graph_reference.centralities``). The two draw the same
    seeds but not the same random swaps. ``n_jobs``: processes for the igraph draws (the same numbers as one)."""
    rng = np.random.default_rng([seed, 3])
    fixed = network.features.drop(columns=["cluster", "kept", "degree", "betweenness", "closeness", "eigenvector"])
    columns = ["draw", "metric", "n_kept", "anova_F", "kruskal_H"]
    if engine == "igraph":
        g0, nodes = graph_engine.from_networkx(network.graph)
        table = fixed.set_index("feature").reindex(nodes)
        tasks = ((_rewired_draw, g0, int(rng.integers(2**31)), draw, nodes, table, metrics, cfg, seed + draw)
                 for draw in range(cfg.n_rewire))
        rows = run_draws(tasks, cfg.n_rewire, n_jobs, "H1 rewired null", progress)
        return pd.DataFrame([row for draw_rows in rows for row in draw_rows], columns=columns)
    rows = []
    for draw in tqdm(range(cfg.n_rewire), desc="H1 rewired null", leave=False, disable=not progress):
        f_stat = h_stat = np.full(len(metrics), np.nan)
        graph = rewire_reference(network.graph, int(rng.integers(2**31)))
        partition, kept = kept_partition(graph, cfg, seed + draw)
        if len(kept) >= 2:
            central = centralities(graph, cfg.weighted, cfg.centrality_sources, seed + draw)[0]
            merged = central.merge(fixed, on="feature")
            clusters = np.array([partition[f] for f in merged["feature"]])
            in_kept = np.isin(clusters, kept)
            f_stat, h_stat = anova_kruskal_columns(merged.loc[in_kept, metrics].to_numpy(dtype=float),
                                                   clusters[in_kept])
        rows += [{"draw": draw, "metric": m, "n_kept": len(kept), "anova_F": float(f), "kruskal_H": float(h)}
                 for m, f, h in zip(metrics, f_stat, h_stat)]
    return pd.DataFrame(rows, columns=columns)


def _rewired_draw(g0: ig.Graph, rewire_seed: int, draw: int, nodes: list[int], table: pd.DataFrame,
                  metrics: list[str], cfg: ClusteringConfig, seed: int) -> list[dict]:
    """One rewired-null draw on :mod:`featsweep.engines.graph`: rewire, recluster, and (2+ kept clusters) the
    centralities among ``metrics`` and the F and H over the kept clusters. ``table``: the attribution metrics,
    one row per vertex of ``g0`` (``nodes``)."""
    g = graph_engine.rewire(g0, rewire_seed)
    first = graph_engine.communities(g, cfg.algorithm, cfg.weighted, cfg.resolution, seed, nodes)
    membership, kept = graph_engine.kept_membership(g, first, cfg.min_cluster_size, cfg.recluster_kept,
                                                    cfg.algorithm, cfg.weighted, cfg.resolution, seed, nodes)
    f_stat = h_stat = np.full(len(metrics), np.nan)
    if len(kept) >= 2:
        central, _ = centrality.centralities(g, cfg.weighted, [m for m in centrality.CENTRALITIES if m in metrics],
                                               cfg.centrality_sources, seed)
        values = table.reindex(columns=metrics).to_numpy(dtype=float)
        for name, column in central.items():
            values[:, metrics.index(name)] = column
        in_kept = np.isin(membership, kept)
        f_stat, h_stat = anova_kruskal_columns(values[in_kept], membership[in_kept])
    return [{"draw": draw, "metric": m, "n_kept": len(kept), "anova_F": float(f), "kruskal_H": float(h)}
            for m, f, h in zip(metrics, f_stat, h_stat)]


def null_pvalues(tests: pd.DataFrame, null: pd.DataFrame, method: str = "bonferroni", prefix: str = "") -> pd.DataFrame:
    """Add ``<prefix>null_p``, ``<prefix>kruskal_null_p``, ``n_<prefix>null_valid`` and ``<prefix>null_p_adj``
    (over the metrics) to the cluster-test table: ``(1 + #{null >= observed}) / (1 + n_valid)`` per metric,
    NaN draws left out. ``null``: one row per draw and metric with ``anova_F`` and ``kruskal_H``."""
    out = tests.copy()
    for column, name in (("anova_F", f"{prefix}null_p"), ("kruskal_H", f"{prefix}kruskal_null_p")):
        values, valid = [], []
        for metric, observed in zip(out["metric"], out[column]):
            draws = null.loc[null["metric"] == metric, column].to_numpy(dtype=float)
            draws = draws[np.isfinite(draws)]
            values.append(np.nan if not (len(draws) and np.isfinite(observed))
                          else (1 + int(np.sum(draws >= observed))) / (1 + len(draws)))
            valid.append(float(len(draws)))
        out[name] = values
        if column == "anova_F":
            out[f"n_{prefix}null_valid"] = valid
    out[f"{prefix}null_p_adj"] = adjust_pvalues(out[f"{prefix}null_p"].to_numpy(), method)
    return out


def graph_cluster_tests(g: ig.Graph, membership: np.ndarray, feats: list[int], corr: np.ndarray,
                          columns: list[int], features: pd.DataFrame, metrics: list[str], cfg: ClusteringConfig,
                          seed: int) -> dict[str, float]:
    """F and H of every metric across the kept clusters of a null graph ``g`` (an edge-matched or continuum draw) on
    the compiled engine: ``g``'s vertex k is ``feats[k]``; ``corr`` is the draw's correlation over ``columns``.
    Only the centralities among ``metrics`` are computed (the same estimate as the observed graph's)."""
    out = {f"{k}:{m}": np.nan for k in "FH" for m in metrics}
    membership, kept = graph_engine.kept_membership(g, membership, cfg.min_cluster_size, cfg.recluster_kept,
                                                    cfg.algorithm, cfg.weighted, cfg.resolution, seed, feats)
    if len(kept) < 2:
        return out
    central, _ = centrality.centralities(g, cfg.weighted, [m for m in centrality.CENTRALITIES if m in metrics],
                                           cfg.centrality_sources, seed)
    table = features.set_index("feature").loc[feats]
    for name, values in central.items():
        table[name] = values
    if "abs_corr" in metrics:
        order = {f: k for k, f in enumerate(columns)}  # corr's column order
        idx = [order[f] for f in feats]
        table["abs_corr"] = (np.abs(corr[idx]).sum(axis=1) - 1.0) / max(len(order) - 1, 1)
    in_kept = np.isin(membership, kept)
    f_stat, h_stat = anova_kruskal_columns(table[metrics].to_numpy(dtype=float)[in_kept], membership[in_kept])
    out.update({f"F:{m}": float(v) for m, v in zip(metrics, f_stat)})
    out.update({f"H:{m}": float(v) for m, v in zip(metrics, h_stat)})
    return out
