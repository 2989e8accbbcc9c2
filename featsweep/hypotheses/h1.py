"""H1, "clusters are distinct": is the network's structure more than chance, and is it stable?

* **Permutation null.** Each feature's column is shuffled across prompts independently (a seeded generator),
  then the whole pipeline (correlate, threshold, cluster) reruns: null edge counts and null modularities
  (``h1.null_modularity_mean``, ``h1.modularity_z``). Because modularity depends on density (sparse null graphs
  of disjoint pairs score near 1), an edge-matched null is also reported: the observed number of strongest
  null pairs, reclustered (``h1.null_matched_modularity_mean``, ``h1.matched_modularity_z``).
* **Bootstrap stability.** Prompts are resampled with replacement, the pipeline reruns, and the adjusted Rand
  index against the full-data partition is taken over the features present in both.
* **Cluster tests.** ANOVA and Kruskal-Wallis of every per-feature metric across the kept clusters, Bonferroni
  over the metrics (``featsweep.hypotheses.stats.cluster_tests``). These p-values are NOMINAL: the clusters and the
  centralities come from the same graph, so a graph with no cluster structure at all still gives
  "significant" differences in centrality between the clusters that modularity carves out of it.
* **Graph-aware null** (``clustering.n_rewire`` draws). The observed graph is rewired at random by double-edge
  swaps (igraph's ``Graph.rewire``, ``10 * n_edges`` trials, seeded; every node keeps its degree; the observed
  edge weights are dealt out to the new edges at random; :func:`rewire_reference` is the networkx version),
  then reclustered by the same procedure (communities, optional re-clustering of the kept subset, size
  filter), its centralities recomputed, and the same ANOVA F and Kruskal H computed over its kept clusters
  (attribution metrics stay with their feature). ``h1.<metric>.null_p`` = ``(1 + #{null F >= observed F}) /
  (1 + n_valid)`` (``kruskal_null_p`` the same for H); draws with fewer than 2 kept clusters have no
  statistic and are left out (the observed test is conditional on 2+ kept clusters too).
  ``h1.<metric>.null_p_adj`` is Bonferroni over the metric family. The permutation null's edge-matched graphs
  give a second graph-aware null of the same tests (``h1.<metric>.matched_null_p``, ``matched_null_p_adj``):
  correlation graphs of shuffled data with the observed edge count. It is exact for data without structure
  but keeps no degree sequence; rewiring keeps degrees but not the transitivity of correlation graphs, and is
  somewhat liberal on unstructured data (docs/statistics.md, "H1 calibration"). The verdict asks for both. The family holds each metric once:
  ``mean_abs`` is ``abs_summed / n_prompts`` (identical tests), so only ``abs_summed`` is in it.

Cost. Every null graph of the cluster tests (``n_null`` edge-matched graphs, ``n_rewire`` rewirings) needs its
betweenness and closeness: all shortest paths, ``O(n m)``, and a null graph of shuffled data or a rewiring has one
giant component. So the tests' betweenness and closeness come from ``clustering.centrality_sources`` seeded random
source nodes per component larger than that (Brandes-Pich's unbiased betweenness, Eppstein-Wang's closeness;
``centrality.centralities``), in the observed graph (:func:`tested_features`) and in every null graph alike, so
that the observed and the null statistic stay one function of their graph, as a valid test needs. Components up
to that size (the organism's networks, the blog's) are exact; the features table and H3 always use the exact
values. The draws are pure functions of their shuffle, resample or seed, drawn in order in this process, so
``clustering.n_jobs`` worker processes give the same numbers.
"""

from __future__ import annotations

from typing import Optional

import networkx as nx
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score
from tqdm.auto import tqdm

from featsweep import plots
from featsweep.config import ClusteringConfig
from featsweep.engines import centrality
from featsweep.engines import graph as graph_engine
from featsweep.hypotheses import discreteness
from featsweep.engines.graph_reference import (centralities, correlate, detect_communities, edge_list, partition_modularity,
                             top_pairs_graph)
from featsweep.engines.graph_reference import cluster_matrix as reference_cluster_matrix
from featsweep.results import Network, StageResult
from featsweep.hypotheses.stats import H1_METRICS, anova_kruskal_columns, cluster_tests, null_summary
from featsweep.hypotheses.rewired_null import (draw_jobs, graph_cluster_tests, kept_partition, null_pvalues,
                                                rewired_null, run_draws)
from featsweep.hypotheses.verdicts import h1_verdict


def cluster_matrix(values: np.ndarray, features: list[int], cfg: ClusteringConfig, seed: int,
                   engine: str = "igraph") -> tuple[int, dict[int, int], float]:
    """The whole pipeline on a prompts x features array: correlate, threshold, cluster, modularity.
    Returns ``(n_edges, partition, modularity)``; constant columns are dropped first (a resample may have some).
    ``engine="igraph"``: :mod:`featsweep.engines.graph` (edges, communities and modularity only);
    ``"networkx"``: the reference :mod:`featsweep.engines.graph_reference`."""
    values = np.asarray(values, dtype=float)
    if engine == "igraph":
        c = graph_engine.cluster_values(values, cfg.method, cfg.threshold, cfg.edges, cfg.algorithm, cfg.weighted,
                                        cfg.resolution, seed, features)
        feats = [f for f, k in zip(features, c.keep) if k]
        return c.n_edges, dict(zip(feats, c.membership.tolist())), c.modularity
    graph, partition, modularity = reference_cluster_matrix(values, features, cfg, seed)
    return graph.number_of_edges(), partition, modularity


def permutation_null(matrix: pd.DataFrame, cfg: ClusteringConfig, seed: int, progress: bool = True,
                     recluster: bool = True, match_edges: Optional[int] = None,
                     table: Optional[pd.DataFrame] = None, metrics: Optional[list[str]] = None,
                     engine: str = "igraph", n_jobs: int = 1) -> pd.DataFrame:
    """``cfg.n_null`` draws after shuffling each feature across prompts independently.

    Shuffling keeps every feature's distribution and breaks the co-occurrence between features. Columns:

    * ``n_edges``: edges passing the threshold; ``modularity``: modularity of the reclustered threshold graph.
      A null graph without edges has no community structure: its modularity counts as 0 (at threshold 0.7
      most null graphs are empty). With ``recluster=False`` only edges are counted and modularity is NaN.
    * ``matched_modularity`` (when ``match_edges`` is given): modularity of the reclustered graph of the
      ``match_edges`` strongest null pairs. Modularity is not comparable between graphs of different density
      (a sparse null graph of disjoint pairs scores near 1), so this edge-matched null is the fair reference
      for the observed modularity.
    * ``F:<metric>``, ``H:<metric>`` (when the features ``table`` and ``metrics`` are given with ``match_edges``): the
      cluster tests on that edge-matched graph's kept clusters (``kept_partition``), with its centralities
      and ``abs_corr`` recomputed; the other attribution metrics do not change under shuffling.

    ``engine="igraph"`` correlates each draw once and computes edges, communities and modularity on
    :mod:`featsweep.engines.graph`, on ``n_jobs`` processes (the same numbers as one); ``"networkx"`` is the
    reference. Both draw the same shuffles.
    """
    rng = np.random.default_rng([seed, 1])
    values = matrix.to_numpy(dtype=float)
    features = [int(f) for f in matrix.columns]
    weighted = cfg.weighted
    stat_columns = [f"{k}:{m}" for k in "FH" for m in metrics] if table is not None and metrics else []
    columns = ["draw", "n_edges", "modularity", "matched_modularity", *stat_columns]
    if engine == "igraph":
        # the shuffles are drawn here, in order, from the one generator; each draw's work is a pure function of
        # its shuffle and seed, so a process pool gives the numbers of the serial loop
        tasks = ((_permutation_draw, rng.permuted(values, axis=0), draw, features, cfg, seed + draw, recluster,
                  match_edges, table, metrics) for draw in range(cfg.n_null))
        rows = run_draws(tasks, cfg.n_null, n_jobs, "H1 permutation null", progress)
        return pd.DataFrame(rows, columns=columns)
    rows = []
    for draw in tqdm(range(cfg.n_null), desc="H1 permutation null", leave=False, disable=not progress):
        shuffled = rng.permuted(values, axis=0)
        row = {"draw": draw, "n_edges": 0, "modularity": float("nan"), "matched_modularity": float("nan")}
        keep = np.ptp(shuffled, axis=0) > 0
        feats = [f for f, k in zip(features, keep) if k]
        if recluster:
            row["n_edges"], _, modularity = cluster_matrix(shuffled, features, cfg, seed + draw, engine)
            row["modularity"] = 0.0 if row["n_edges"] == 0 else modularity
        else:
            row["n_edges"] = len(edge_list(correlate(shuffled, cfg.method), cfg.threshold, cfg.edges)[0])
        if match_edges:
            graph = top_pairs_graph(correlate(shuffled[:, keep], cfg.method), feats, match_edges, cfg.edges)
            part = detect_communities(graph, cfg.algorithm, weighted, cfg.resolution, seed + draw)
            row["matched_modularity"] = partition_modularity(graph, part, weighted, cfg.resolution)
            if table is not None and metrics:
                row.update(_matched_tests(graph, part, shuffled, features, table, metrics, cfg, seed + draw))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _permutation_draw(shuffled: np.ndarray, draw: int, features: list[int], cfg: ClusteringConfig, seed: int,
                      recluster: bool, match_edges: Optional[int], table: Optional[pd.DataFrame],
                      metrics: Optional[list[str]]) -> dict:
    """One permutation-null draw on :mod:`featsweep.engines.graph` (see :func:`permutation_null`): the draw's
    correlation is computed once and serves the threshold graph, the matched graph and ``abs_corr``."""
    weighted = cfg.weighted
    row = {"draw": draw, "n_edges": 0, "modularity": float("nan"), "matched_modularity": float("nan")}
    keep = np.ptp(shuffled, axis=0) > 0
    feats = [f for f, k in zip(features, keep) if k]
    corr = graph_engine.correlate(shuffled[:, keep], cfg.method)
    if recluster:
        i, j, r = graph_engine.threshold_edges(corr, cfg.threshold, cfg.edges)
        g = graph_engine.build(len(feats), i, j, r, cfg.edges, full=False)
        part = graph_engine.communities(g, cfg.algorithm, weighted, cfg.resolution, seed, feats)
        row["n_edges"] = g.ecount()
        row["modularity"] = 0.0 if g.ecount() == 0 else graph_engine.modularity(g, part, weighted, cfg.resolution)
    else:
        row["n_edges"] = graph_engine.count_edges(corr, cfg.threshold, cfg.edges)
    if match_edges:
        tested = table is not None and bool(metrics)
        i, j, r = graph_engine.top_pairs(corr, match_edges, cfg.edges)
        g = graph_engine.build(len(feats), i, j, r, cfg.edges, full=tested)  # distances for the tests
        membership = graph_engine.communities(g, cfg.algorithm, weighted, cfg.resolution, seed, feats)
        row["matched_modularity"] = graph_engine.modularity(g, membership, weighted, cfg.resolution)
        if tested:  # the cluster tests need the graph's centralities
            # the draw's correlation gives abs_corr when no column was constant (shuffling keeps values)
            full_corr = corr if keep.all() else correlate(shuffled, cfg.method)
            row.update(graph_cluster_tests(g, membership, feats, full_corr, features, table, metrics, cfg, seed))
    return row


def _matched_tests(graph: nx.Graph, first: dict[int, int], shuffled: np.ndarray, columns: list[int],
                   features: pd.DataFrame, metrics: list[str], cfg: ClusteringConfig, seed: int) -> dict[str, float]:
    partition, kept = kept_partition(graph, cfg, seed, first)
    out = {f"{k}:{m}": np.nan for k in "FH" for m in metrics}
    if len(kept) < 2:
        return out
    central = centralities(graph, cfg.weighted, cfg.centrality_sources, seed)[0]
    table = features.set_index("feature").loc[central["feature"]].reset_index()
    table[["degree", "betweenness", "closeness", "eigenvector"]] = central[["degree", "betweenness", "closeness",
                                                                              "eigenvector"]].to_numpy()
    corr = np.abs(correlate(shuffled, cfg.method))
    order = {f: k for k, f in enumerate(columns)}  # the shuffled matrix's column order
    idx = [order[f] for f in table["feature"]]
    table["abs_corr"] = (corr[idx].sum(axis=1) - 1.0) / max(len(order) - 1, 1)
    clusters = np.array([partition.get(f, -1) for f in table["feature"]])
    in_kept = np.isin(clusters, kept)
    f_stat, h_stat = anova_kruskal_columns(table.loc[in_kept, metrics].to_numpy(dtype=float), clusters[in_kept])
    out.update({f"F:{m}": float(v) for m, v in zip(metrics, f_stat)})
    out.update({f"H:{m}": float(v) for m, v in zip(metrics, h_stat)})
    return out


def bootstrap_stability(matrix: pd.DataFrame, partition: dict[int, int], cfg: ClusteringConfig, seed: int,
                        progress: bool = True, engine: str = "igraph", n_jobs: int = 1) -> pd.DataFrame:
    """``cfg.n_bootstrap`` resamples of the prompts (with replacement), reclustered; ARI against ``partition``
    over the features present in both (a feature constant in a resample drops out of that draw)."""
    rng = np.random.default_rng([seed, 2])
    values = matrix.to_numpy(dtype=float)
    features = [int(f) for f in matrix.columns]
    tasks = ((_bootstrap_draw, values[rng.integers(0, len(values), size=len(values))], draw, features, partition,
              cfg, seed + draw, engine) for draw in range(cfg.n_bootstrap))
    rows = run_draws(tasks, cfg.n_bootstrap, n_jobs if engine == "igraph" else 1, "H1 bootstrap", progress)
    return pd.DataFrame(rows, columns=["draw", "ari", "n_common", "n_edges"])


def _bootstrap_draw(sample: np.ndarray, draw: int, features: list[int], partition: dict[int, int],
                    cfg: ClusteringConfig, seed: int, engine: str) -> dict:
    if engine == "igraph":
        c = graph_engine.cluster_values(sample, cfg.method, cfg.threshold, cfg.edges, cfg.algorithm, cfg.weighted,
                                        cfg.resolution, seed, features)
        feats = [f for f, k in zip(features, c.keep) if k]
        membership = c.membership
        if cfg.recluster_kept:
            membership, _ = graph_engine.kept_membership(c.graph, membership, cfg.min_cluster_size, True,
                                                         cfg.algorithm, cfg.weighted, cfg.resolution, seed, feats)
        n_edges, boot = c.n_edges, dict(zip(feats, membership.tolist()))
    else:
        graph, boot, _ = reference_cluster_matrix(sample, features, cfg, seed)
        n_edges = graph.number_of_edges()
        if cfg.recluster_kept:
            boot, _ = kept_partition(graph, cfg, seed, boot)
    common = [f for f in features if f in boot and f in partition]
    ari = adjusted_rand_score([partition[f] for f in common], [boot[f] for f in common]) if common else np.nan
    return {"draw": draw, "ari": float(ari), "n_common": len(common), "n_edges": n_edges}


def h1_statistics(network: Network, cfg: ClusteringConfig, seed: int, has_gen_max: bool,
                  progress: bool = True, engine: str = "igraph") -> StageResult:
    """The permutation null, bootstrap stability and cluster tests of one network, as metrics, tables and plots."""
    result = StageResult()
    n_edges = network.graph.number_of_edges()
    metrics = [m for m in H1_METRICS if m != "gen_max_activation" or has_gen_max]
    n_jobs = draw_jobs(cfg, network.graph.number_of_nodes())
    null = (_null_statistics(network, cfg, seed, progress, result, metrics, engine, n_jobs) if cfg.n_null > 0
            else None)
    if cfg.n_bootstrap > 0 and n_edges > 0:
        boot = bootstrap_stability(network.matrix, network.partition, cfg, seed, progress, engine, n_jobs)
        result.metrics["h1.bootstrap_ari_mean"] = float(boot["ari"].mean())
        result.metrics["h1.bootstrap_ari_std"] = float(boot["ari"].std(ddof=1)) if len(boot) > 1 else 0.0
        result.tables["tables/h1_bootstrap.parquet"] = boot
    kept = network.kept_clusters
    if len(kept) >= 2:
        tests = cluster_tests(tested_features(network, cfg, seed, engine, result), metrics, clusters=kept)
        if cfg.n_rewire > 0:
            rewired = rewired_null(network, cfg, seed, metrics, progress, engine, n_jobs)
            tests = null_pvalues(tests, rewired)
            result.tables["tables/h1_rewired_null.parquet"] = rewired
        if null is not None and f"F:{metrics[0]}" in null:
            matched = pd.concat([pd.DataFrame({"draw": null["draw"], "metric": m, "anova_F": null[f"F:{m}"],
                                               "kruskal_H": null[f"H:{m}"]}) for m in metrics], ignore_index=True)
            tests = null_pvalues(tests, matched, prefix="matched_")
        if cfg.n_continuum > 0:  # cuts of a continuum are not distinct groups (featsweep.hypotheses.discreteness)
            tests = _continuum_statistics(network, cfg, seed, progress, result, metrics, tests, n_jobs)
        for row in tests.to_dict("records"):
            for key, value in row.items():
                if key not in ("metric", "n_groups"):
                    result.metrics[f"h1.{row['metric']}.{key}"] = float(value)
        result.tables["tables/h1_tests.parquet"] = tests
    else:
        result.tags["h1.tests_skipped"] = (f"ANOVA/Kruskal need at least 2 kept clusters; found {len(kept)} "
                                           f"(clustering.min_cluster_size={cfg.min_cluster_size}).")
    verdict, reason = h1_verdict(result.metrics, len(kept))
    result.tags.update({"h1.verdict": verdict, "h1.verdict_reason": reason})
    return result


def _continuum_statistics(network: Network, cfg: ClusteringConfig, seed: int, progress: bool, result: StageResult,
                          metrics: list[str], tests: pd.DataFrame, n_jobs: int) -> pd.DataFrame:
    """The continuum null: ``h1.silhouette`` against each fitted continuum's draws, and the cluster tests'
    ``continuum_null_p`` columns."""
    null, fits = discreteness.continuum_null(network.matrix, cfg, seed, network.features, metrics, progress, n_jobs)
    observed = discreteness.observed_silhouette(network.corr, network.partition, network.kept_clusters)
    result.metrics.update(discreteness.discreteness_metrics(observed, null, fits))
    closest = max(fits, key=lambda f: np.nan_to_num(result.metrics[f"h1.continuum_{f.shape}.p"], nan=-1.0))
    result.tags["h1.continuum_shape"] = closest.shape
    result.tables["tables/h1_continuum_null.parquet"] = null
    result.figures["plots/null_continuum_silhouette.png"] = plots.plot_null_distribution(
        null.loc[null["shape"] == closest.shape, "silhouette"].to_numpy(), observed, "mean silhouette",
        title=f"silhouette: the closest fitted continuum ({closest.shape}) vs observed")
    return discreteness.metric_pvalues(tests, null, metrics)


def tested_features(network: Network, cfg: ClusteringConfig, seed: int, engine: str,
                    result: StageResult) -> pd.DataFrame:
    """The per-feature table the observed cluster tests use: the features table, with betweenness and closeness
    estimated as in every null graph (``clustering.centrality_sources``, seeded by ``seed``) when the observed
    graph has a component larger than that; the null and the observed statistic are then the same function of
    their graph, as a valid test needs. The features table itself keeps the exact values (tag
    ``h1.centrality_estimate`` says when the tests used the estimate)."""
    k = cfg.centrality_sources
    if engine == "igraph":
        g, nodes = graph_engine.from_networkx(network.graph)
        if not centrality.needs_estimate(g, k):
            return network.features
        central, _ = centrality.centralities(g, cfg.weighted, ("betweenness", "closeness"), k, seed)
        estimate = pd.DataFrame({"feature": nodes, **central})
    else:
        components = list(nx.connected_components(network.graph))
        if k is None or not network.graph.number_of_edges() or max(len(c) for c in components) <= k:
            return network.features
        estimate = centralities(network.graph, cfg.weighted, k, seed)[0][["feature", "betweenness", "closeness"]]
    result.tags["h1.centrality_estimate"] = (
        f"The cluster tests' betweenness and closeness (observed and null graphs alike) are estimated from "
        f"clustering.centrality_sources={k} sampled sources per component; tables/features.parquet has the "
        f"exact values. clustering.centrality_sources=null tests the exact ones (slower).")
    table = network.features.drop(columns=["betweenness", "closeness"])
    return table.merge(estimate, on="feature")[network.features.columns]


def _null_statistics(network: Network, cfg: ClusteringConfig, seed: int, progress: bool, result: StageResult,
                     metrics: list[str], engine: str, n_jobs: int = 1) -> pd.DataFrame:
    n_edges = network.graph.number_of_edges()
    modularity = network.modularity
    tested = len(network.kept_clusters) >= 2
    null = permutation_null(network.matrix, cfg, seed, progress, recluster=n_edges > 0, match_edges=n_edges or None,
                            table=network.features if tested else None, metrics=metrics if tested else None,
                            engine=engine, n_jobs=n_jobs)
    for name, observed, column in (("edges", float(n_edges), "n_edges"), ("modularity", modularity, "modularity"),
                                   ("matched_modularity", modularity, "matched_modularity")):
        summary = null_summary(observed, null[column].to_numpy())
        result.metrics.update({
            f"h1.null_{name}_mean": summary["mean"], f"h1.null_{name}_std": summary["std"], f"h1.{name}_p": summary["p"],
        })
        if np.isfinite(summary["z"]):  # undefined against a null without spread: not logged (docs/metrics.md)
            result.metrics[f"h1.{name}_z"] = summary["z"]
    result.tables["tables/h1_null.parquet"] = null
    result.figures["plots/null_edges.png"] = plots.plot_null_distribution(
        null["n_edges"].to_numpy(), float(n_edges), "number of edges")
    if n_edges > 0:
        result.figures["plots/null_modularity.png"] = plots.plot_null_distribution(
            null["modularity"].to_numpy(), modularity, "modularity")
        result.figures["plots/null_matched_modularity.png"] = plots.plot_null_distribution(
            null["matched_modularity"].to_numpy(), modularity, "modularity",
            title=f"modularity: edge-matched null ({n_edges} strongest pairs) vs observed")
    return null
