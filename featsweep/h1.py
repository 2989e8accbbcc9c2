"""H1, "clusters are distinct": is the network's structure more than chance, and is it stable?

* **Permutation null.** Each feature's column is shuffled across prompts independently (a seeded generator),
  then the whole pipeline (correlate, threshold, cluster) reruns: null edge counts and null modularities
  (``h1.null_modularity_mean``, ``h1.modularity_z``). Because modularity depends on density (sparse null graphs
  of disjoint pairs score near 1), an edge-matched null is also reported: the observed number of strongest
  null pairs, reclustered (``h1.null_matched_modularity_mean``, ``h1.matched_modularity_z``).
* **Bootstrap stability.** Prompts are resampled with replacement, the pipeline reruns, and the adjusted Rand
  index against the full-data partition is taken over the features present in both.
* **Cluster tests.** ANOVA and Kruskal-Wallis of every per-feature metric across the kept clusters, Bonferroni
  over the metrics (``featsweep.stats.cluster_tests``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score
from tqdm.auto import tqdm

from featsweep import plots
from featsweep.config import ClusteringConfig
from featsweep import graph as reference
from featsweep import graph_engine
from featsweep.results import Network, StageResult
from featsweep.stats import H1_METRICS, cluster_tests, null_summary


def cluster_matrix(values: np.ndarray, features: list[int], cfg: ClusteringConfig, seed: int,
                   engine: str = "igraph") -> tuple[int, dict[int, int], float]:
    """The whole pipeline on a prompts x features array: correlate, threshold, cluster, modularity.
    Returns ``(n_edges, partition, modularity)``; constant columns are dropped first (a resample may have some).
    ``engine="igraph"``: :mod:`featsweep.graph_engine` (edges, communities and modularity only);
    ``"networkx"``: the reference :mod:`featsweep.graph`."""
    values = np.asarray(values, dtype=float)
    if engine == "igraph":
        c = graph_engine.cluster_values(values, cfg.method, cfg.threshold, cfg.edges, cfg.algorithm, cfg.weighted,
                                        cfg.resolution, seed, features)
        feats = [f for f, k in zip(features, c.keep) if k]
        return c.n_edges, dict(zip(feats, c.membership.tolist())), c.modularity
    graph, partition, modularity = reference.cluster_matrix(values, features, cfg, seed)
    return graph.number_of_edges(), partition, modularity


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

    ``engine="igraph"`` correlates each draw once and computes only edges, communities and modularity;
    ``"networkx"`` is the reference. Both draw the same shuffles.
    """
    rng = np.random.default_rng([seed, 1])
    values = matrix.to_numpy(dtype=float)
    features = [int(f) for f in matrix.columns]
    weighted = cfg.weighted
    rows = []
    for draw in tqdm(range(cfg.n_null), desc="H1 permutation null", leave=False, disable=not progress):
        shuffled = rng.permuted(values, axis=0)
        row = {"draw": draw, "n_edges": 0, "modularity": float("nan"), "matched_modularity": float("nan")}
        keep = np.ptp(shuffled, axis=0) > 0
        feats = [f for f, k in zip(features, keep) if k]
        if engine == "igraph":
            corr = graph_engine.correlate(shuffled[:, keep], cfg.method)
            if recluster:
                i, j, r = graph_engine.threshold_edges(corr, cfg.threshold, cfg.edges)
                g = graph_engine.build(len(feats), i, j, r, cfg.edges)
                part = graph_engine.communities(g, cfg.algorithm, weighted, cfg.resolution, seed + draw, feats)
                row["n_edges"] = g.ecount()
                row["modularity"] = 0.0 if g.ecount() == 0 else graph_engine.modularity(g, part, weighted, cfg.resolution)
            else:
                row["n_edges"] = graph_engine.count_edges(corr, cfg.threshold, cfg.edges)
            if match_edges:
                row["matched_modularity"] = graph_engine.matched_modularity(
                    corr, match_edges, cfg.edges, cfg.algorithm, weighted, cfg.resolution, seed + draw, feats)
            rows.append(row)
            continue
        if recluster:
            row["n_edges"], _, modularity = cluster_matrix(shuffled, features, cfg, seed + draw, engine)
            row["modularity"] = 0.0 if row["n_edges"] == 0 else modularity
        else:
            row["n_edges"] = len(reference.edge_list(reference.correlate(shuffled, cfg.method), cfg.threshold, cfg.edges)[0])
        if match_edges:
            graph = reference.top_pairs_graph(reference.correlate(shuffled[:, keep], cfg.method), feats, match_edges,
                                              cfg.edges)
            part = reference.detect_communities(graph, cfg.algorithm, weighted, cfg.resolution, seed + draw)
            row["matched_modularity"] = reference.partition_modularity(graph, part, weighted, cfg.resolution)
        rows.append(row)
    return pd.DataFrame(rows, columns=["draw", "n_edges", "modularity", "matched_modularity"])


def bootstrap_stability(matrix: pd.DataFrame, partition: dict[int, int], cfg: ClusteringConfig, seed: int,
                        progress: bool = True, engine: str = "igraph") -> pd.DataFrame:
    """``cfg.n_bootstrap`` resamples of the prompts (with replacement), reclustered; ARI against ``partition``
    over the features present in both (a feature constant in a resample drops out of that draw)."""
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


def h1_statistics(network: Network, cfg: ClusteringConfig, seed: int, has_gen_max: bool,
                  progress: bool = True, engine: str = "igraph") -> StageResult:
    """The permutation null, bootstrap stability and cluster tests of one network, as metrics, tables and plots."""
    result = StageResult()
    n_edges = network.graph.number_of_edges()
    if cfg.n_null > 0:
        _null_statistics(network, cfg, seed, progress, result, engine)
    if cfg.n_bootstrap > 0 and n_edges > 0:
        boot = bootstrap_stability(network.matrix, network.partition, cfg, seed, progress, engine)
        result.metrics["h1.bootstrap_ari_mean"] = float(boot["ari"].mean())
        result.metrics["h1.bootstrap_ari_std"] = float(boot["ari"].std(ddof=1)) if len(boot) > 1 else 0.0
        result.tables["tables/h1_bootstrap.parquet"] = boot
    kept = network.kept_clusters
    metrics = [m for m in H1_METRICS if m != "gen_max_activation" or has_gen_max]
    if len(kept) >= 2:
        tests = cluster_tests(network.features, metrics, clusters=kept)
        for row in tests.to_dict("records"):
            for key in ("anova_F", "anova_p", "anova_p_adj", "kruskal_H", "kruskal_p", "kruskal_p_adj"):
                result.metrics[f"h1.{row['metric']}.{key}"] = float(row[key])
        result.tables["tables/h1_tests.parquet"] = tests
    else:
        result.tags["h1.tests_skipped"] = (f"ANOVA/Kruskal need at least 2 kept clusters; found {len(kept)} "
                                           f"(clustering.min_cluster_size={cfg.min_cluster_size}).")
    return result


def _null_statistics(network: Network, cfg: ClusteringConfig, seed: int, progress: bool, result: StageResult,
                     engine: str) -> None:
    n_edges = network.graph.number_of_edges()
    modularity = network.modularity
    null = permutation_null(network.matrix, cfg, seed, progress, recluster=n_edges > 0, match_edges=n_edges or None,
                            engine=engine)
    for name, observed, column in (("edges", float(n_edges), "n_edges"), ("modularity", modularity, "modularity"),
                                   ("matched_modularity", modularity, "matched_modularity")):
        summary = null_summary(observed, null[column].to_numpy())
        result.metrics.update({
            f"h1.null_{name}_mean": summary["mean"], f"h1.null_{name}_std": summary["std"],
            f"h1.{name}_z": summary["z"], f"h1.{name}_p": summary["p"],
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
