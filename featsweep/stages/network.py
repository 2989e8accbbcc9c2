"""The network stage: the co-occurrence network of the selected features, described and tested for H1.

* **Feature cap.** ``clustering.max_features`` (default 2,000) keeps the features of largest mean |attribution|
  when more vary across prompts (metric ``network.n_capped_features``, tag ``network.feature_cap``): community
  detection runs ``1 + n_null + n_bootstrap + n_rewire`` times, and betweenness and closeness
  ``1 + n_null + n_rewire`` times (from ``clustering.centrality_sources`` sources per large component in the
  null graphs, ``featsweep.hypotheses.h1``).
* **Constant features.** A feature whose attribution is the same on every prompt has no defined correlation.
  It is dropped before correlating and counted in ``network.n_constant_features``; it never gives NaN edges.
* **Clusters.** Communities from ``featsweep.engines.graph_reference``; clusters with ``size >= clustering.min_cluster_size``
  (inclusive) are kept. With ``clustering.recluster_kept`` the kept clusters' subgraph is clustered again
  (``featsweep.hypotheses.rewired_null.kept_partition``); ``network.modularity`` stays the first pass's.
* The graph conventions (edges, weights, algorithms, centralities) are in ``featsweep.engines.graph_reference``; the H1
  statistics (nulls, bootstrap, cluster tests) in ``featsweep.hypotheses.h1``.
"""

from __future__ import annotations

import logging
from typing import Optional
from xml.sax.saxutils import escape, quoteattr

import networkx as nx
import numpy as np
import pandas as pd

from featsweep import plots

from featsweep.engines import centrality
from featsweep.engines import graph as graph_engine
from featsweep.config import ClusteringConfig, EdgeSign
from featsweep.engines.graph_reference import build_graph, centralities, detect_communities, partition_modularity
from featsweep.engines.graph import correlate
from featsweep.hypotheses.h1 import h1_statistics
from featsweep.hypotheses.rewired_null import kept_partition
from featsweep.results import Network, StageResult
from featsweep.hypotheses.stats import H1_METRICS
from featsweep.subjects.loading import neuronpedia_url

log = logging.getLogger(__name__)

CENTRALITY_METRICS = ["degree", "betweenness", "closeness", "eigenvector"]
ATTRIBUTION_METRICS = ["abs_corr", "max", "summed", "abs_summed", "std", "mean_abs"]
FEATURE_COLUMNS = ["feature", "cluster", "kept", *CENTRALITY_METRICS, *ATTRIBUTION_METRICS,
                   "gen_max_activation", "neuronpedia_url"]


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


# ---- the stage --------------------------------------------------------------------------------------------


def network_stage(matrix: pd.DataFrame, cfg: ClusteringConfig, seed: int, gen_max: Optional[np.ndarray],
                  neuronpedia_id: Optional[str], progress: bool = True, engine: str = "igraph"
                  ) -> tuple[Optional[Network], StageResult]:
    """Build and describe the network of ``matrix`` (prompts x features) and run the H1 statistics.

    Returns ``(None, result)`` when fewer than 2 non-constant features exist; otherwise a Network, with
    ``result.skip_reason`` set when no edge passes ``clustering.threshold`` or no cluster reaches
    ``clustering.min_cluster_size`` (the later stages then skip; nothing raises). The result carries the
    graph as ``network/graph.graphml``.
    """
    result = StageResult()
    used = _usable_features(matrix, cfg, result)
    if used is None:
        return None, result
    network = build_network(used, cfg, seed, gen_max, neuronpedia_id, engine)
    n_edges = network.graph.number_of_edges()
    result.metrics.update(_network_metrics(network, cfg))
    result.tags["network.eigenvector_method"] = network.eigenvector_method
    result.tables["tables/features.parquet"] = network.features
    result.files["network/graph.graphml"] = graphml_bytes(network.graph)
    result.merge(h1_statistics(network, cfg, seed, has_gen_max=gen_max is not None, progress=progress, engine=engine))
    result.figures.update(_network_figures(network, seed))
    if n_edges == 0:
        n = len(network.corr)
        largest = float(np.max(np.abs(network.corr.to_numpy()[np.triu_indices(n, 1)])))
        _skip(result, f"No pair of the {n} features passes clustering.threshold={cfg.threshold} "
                      f"(clustering.edges={EdgeSign(cfg.edges).value}; largest |r| = {largest:.3f}). "
                      "Lower clustering.threshold, or select more features.")
    elif not network.kept_clusters:
        largest = int(network.features["cluster"].value_counts().max())
        _skip(result, f"No cluster reaches clustering.min_cluster_size={cfg.min_cluster_size} (largest has {largest} "
                      f"features). Lower clustering.min_cluster_size or clustering.threshold.")
    return network, result


def _skip(result: StageResult, reason: str) -> None:
    result.skip_reason = reason
    result.tags["network.skip_reason"] = reason
    log.warning(reason)


def _usable_features(matrix: pd.DataFrame, cfg: ClusteringConfig, result: StageResult) -> Optional[pd.DataFrame]:
    """Drop constant features and apply the feature cap; None (with a skip reason) when fewer than 2 remain."""
    used, constant = drop_constant(matrix)
    result.metrics["network.n_input_features"] = float(matrix.shape[1])
    result.metrics["network.n_constant_features"] = float(len(constant))
    if used.shape[1] < 2:
        _skip(result, f"The network needs at least 2 features that vary across prompts; got {used.shape[1]} "
                      f"({matrix.shape[1]} selected, {len(constant)} constant and dropped). Relax the feature "
                      "selection (attribution.selection=min_fraction or attribution.selection=topk).")
        return None
    cap = cfg.max_features
    result.metrics["network.n_capped_features"] = 0.0
    if cap and used.shape[1] > cap:
        n_capped = used.shape[1] - cap
        used = cap_features(used, cap)
        result.metrics["network.n_capped_features"] = float(n_capped)
        note = (f"{cap + n_capped} features vary across prompts; kept the top clustering.max_features={cap} by "
                f"mean |attribution|. Raise clustering.max_features (slower) or choose the features with "
                f"attribution.selection=topk.")
        result.tags["network.feature_cap"] = note
        log.warning(note)
    return used


def _observe(corr: np.ndarray, features: list[int], cfg: ClusteringConfig, seed: int):
    """The observed network on the compiled engine: ``(networkx graph, partition {feature: cluster},
    modularity, centrality frame with a feature column, eigenvector method)``. The networkx graph is built
    once at the end, for the graph file, the plots and steering."""
    i, j, r = graph_engine.threshold_edges(corr, cfg.threshold, cfg.edges)
    g = graph_engine.build(len(features), i, j, r, cfg.edges)
    membership = graph_engine.communities(g, cfg.algorithm, cfg.weighted, cfg.resolution, seed, features)
    score = graph_engine.modularity(g, membership, cfg.weighted, cfg.resolution)
    cent, method = centrality.centralities(g, cfg.weighted)
    frame = pd.DataFrame({"feature": features, **cent})
    partition = {f: int(c) for f, c in zip(features, membership)}
    return graph_engine.to_networkx(features, g), partition, score, frame, method


def build_network(used: pd.DataFrame, cfg: ClusteringConfig, seed: int, gen_max: Optional[np.ndarray],
                  neuronpedia_id: Optional[str], engine: str = "igraph") -> Network:
    """Correlate, threshold, cluster and describe: the Network with its per-feature table on the nodes.
    ``engine="igraph"`` computes on :mod:`featsweep.engines.graph`; ``"networkx"`` on the reference
    :mod:`featsweep.engines.graph_reference` (tests and ``benchmarks/network.py`` compare the two)."""
    features = [int(f) for f in used.columns]
    corr = pd.DataFrame(correlate(used.to_numpy(), cfg.method), index=features, columns=features)
    if engine == "igraph":
        graph, first, modularity, central, eig_method = _observe(corr.to_numpy(), features, cfg, seed)
    else:
        graph = build_graph(corr, cfg.threshold, cfg.edges)
        first = detect_communities(graph, cfg.algorithm, cfg.weighted, cfg.resolution, seed)
        modularity = partition_modularity(graph, first, cfg.weighted, cfg.resolution)
        central, eig_method = centralities(graph, cfg.weighted)
    # modularity is the first pass's: the quantity the permutation nulls recompute
    partition, kept = kept_partition(graph, cfg, seed, first)  # clustering.recluster_kept applies here
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
    return Network(matrix=used, corr=corr, graph=graph, partition=partition, kept_clusters=kept, features=table,
                   modularity=modularity, eigenvector_method=eig_method)


_GRAPHML_TYPES = [(bool, "boolean"), (int, "long"), (float, "double"), (str, "string")]


def _graphml_type(value) -> str:
    for kind, name in _GRAPHML_TYPES:
        if isinstance(value, kind):
            return name
    raise TypeError(f"no GraphML type for {type(value).__name__}")


def graphml_bytes(graph: nx.Graph) -> bytes:
    """A networkx graph with scalar node and edge attributes as GraphML, in the layout of
    ``networkx.write_graphml`` (which ``networkx.read_graphml`` reads back with the same values and types),
    in one pass of string formatting: networkx's ElementTree writer takes ~20 s for 5,000 nodes and 300k edges."""
    node_keys: dict[str, str] = {}
    for _, data in graph.nodes(data=True):
        for name, value in data.items():
            node_keys.setdefault(name, _graphml_type(value))
    edge_keys: dict[str, str] = {}
    for _, _, data in graph.edges(data=True):
        for name, value in data.items():
            edge_keys.setdefault(name, _graphml_type(value))
    ids = {("node", name): f"d{k}" for k, name in enumerate(node_keys)}
    ids.update({("edge", name): f"d{len(node_keys) + k}" for k, name in enumerate(edge_keys)})

    def text(value) -> str:
        return escape(str(value))

    def ident(node) -> str:
        return f'"{node}"' if isinstance(node, int) else quoteattr(str(node))

    lines = ["<?xml version='1.0' encoding='utf-8'?>",
             '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
             'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
             'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">']
    for (kind, name), key in ids.items():
        kinds = node_keys if kind == "node" else edge_keys
        lines.append(f'  <key id="{key}" for="{kind}" attr.name={quoteattr(name)} attr.type="{kinds[name]}" />')
    lines.append('  <graph edgedefault="undirected">')
    for node, data in graph.nodes(data=True):
        lines.append(f"    <node id={ident(node)}>")
        lines.extend(f'      <data key="{ids["node", name]}">{text(value)}</data>' for name, value in data.items())
        lines.append("    </node>")
    for a, b, data in graph.edges(data=True):
        inner = "".join(f'<data key="{ids["edge", name]}">{value!r}</data>' if isinstance(value, float)
                        else f'<data key="{ids["edge", name]}">{text(value)}</data>' for name, value in data.items())
        lines.append(f"    <edge source={ident(a)} target={ident(b)}>{inner}</edge>")
    lines.append("  </graph>")
    lines.append("</graphml>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _network_metrics(network: Network, cfg: ClusteringConfig) -> dict[str, float]:
    graph, table = network.graph, network.features
    sizes = table["cluster"].value_counts()
    n, n_edges = graph.number_of_nodes(), graph.number_of_edges()
    return {
        "network.n_features": float(n),
        "network.n_edges": float(n_edges),
        "network.density": float(n_edges / (n * (n - 1) / 2)),
        "network.n_isolated": float(nx.number_of_isolates(graph)),
        "network.n_clusters": float(len(sizes)),
        "network.n_kept_clusters": float(len(network.kept_clusters)),
        "network.n_kept_features": float(table["kept"].sum()),
        "network.largest_cluster_size": float(sizes.max()),
        "network.modularity": network.modularity,
        "network.n_components": float(nx.number_connected_components(graph)) if n else 0.0,
    }


def _network_figures(network: Network, seed: int) -> dict:
    corr, partition, kept, table = network.corr, network.partition, network.kept_clusters, network.features
    figures = {
        "plots/corr_heatmap_raw.png": plots.plot_corr_heatmap(corr, "attribution correlation (raw)"),
        "plots/corr_heatmap_sorted.png": plots.plot_corr_heatmap(
            corr, "attribution correlation (sorted by cluster)", partition=partition, kept=kept),
        "plots/network.png": plots.plot_network(network.graph, partition, kept, seed=seed),
    }
    if kept:
        attribution_columns = [m for m in H1_METRICS if m not in CENTRALITY_METRICS and table[m].notna().any()]
        figures["plots/violins_centrality.png"] = plots.plot_cluster_violins(
            table, CENTRALITY_METRICS, kept, "centrality per kept cluster")
        figures["plots/violins_attribution.png"] = plots.plot_cluster_violins(
            table, attribution_columns, kept, "attribution metrics per kept cluster")
    return figures
