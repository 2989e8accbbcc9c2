"""The co-occurrence stage: from the corpus counts of every latent to the dictionary graph, its communities and H4.

Inputs: the :class:`~featsweep.engines.cooccurrence.Counts` of the corpus (cached per subject and counting
settings), the subject (for logit-lens labels) and the task network (for H4; ``None`` when the network stage
made none). Outputs ``cooc.*`` metrics, ``cooc/counts.npz``, ``cooc/communities.graphml``, the community and
latent tables, two plots and the H4 metrics and verdict. Only pairs at or above ``cooccurrence.floor`` are
counted into the graph and ``cooc/counts.npz``; H4 counts its latents exactly. Bad settings that leave no graph (an
``edge_threshold`` that leaves no edge, an ``auto`` search that cannot reach its range) are one line in the
tag ``cooc.error`` and a warning; the counts, the latents table and H4's co-occurrence tests are still logged.
"""

from __future__ import annotations

import io
import logging
from typing import Optional

import networkx as nx
import numpy as np
import pandas as pd
from scipy import sparse

from featsweep import plots
from featsweep.config import CooccurrenceConfig, CoocMeasure
from featsweep.engines.dictionary_graph import (DictionaryGraph, auto_threshold, build_dictionary_graph,
                                                community_table)
from featsweep.errors import FeatsweepError
from featsweep.hypotheses.h4 import h4_statistics
from featsweep.stages.network import graphml_bytes
from featsweep.results import Network, StageResult
from featsweep.engines.cooccurrence import Counts, logit_lens_labels, pair_counts

log = logging.getLogger(__name__)
N_DRAWN = 4  # communities drawn in plots/cooc_communities.png


def counts_npz(counts: Counts, pairs: sparse.csr_matrix) -> bytes:
    """The counts as one scipy.sparse upper-triangular CSR matrix: ``C_ii`` on the diagonal, the kept ``C_ij`` above."""
    buffer = io.BytesIO()
    sparse.save_npz(buffer, (pairs + sparse.diags(counts.per_latent, dtype=np.int64)).tocsr())
    return buffer.getvalue()


def cooccurrence_stage(counts: Counts, cfg: CooccurrenceConfig, seed: int, network: Optional[Network] = None,
                       subject=None) -> tuple[Optional[DictionaryGraph], StageResult]:
    result = StageResult()
    m = result.metrics
    alive = counts.per_latent > 0
    m.update({"cooc.n_units": float(counts.n_units), "cooc.n_tokens": float(counts.n_tokens),
              "cooc.n_latents": float(counts.d_sae), "cooc.n_active_latents": float(alive.sum()),
              "cooc.mean_active_per_unit": float(counts.per_latent.sum() / max(counts.n_units, 1))})
    graph = None
    try:
        pairs, w = pair_counts(counts, cfg.measure, cfg.floor, progress=True)
        m["cooc.n_pairs"] = float(pairs.nnz)  # pairs at or above the floor
        result.files["cooc/counts.npz"] = counts_npz(counts, pairs)
        graph = _graph(w, cfg, seed)
    except FeatsweepError as err:
        result.tags["cooc.error"] = str(err)
        log.warning("Dictionary graph: %s", err)
    latent_ids = np.flatnonzero(alive)  # a latent with an edge has fired
    labels = dict(zip(latent_ids.tolist(), logit_lens_labels(subject.sae, subject.model, latent_ids, cfg.n_labels)
                      if subject is not None else [""] * len(latent_ids)))
    result.tables["tables/cooc_latents.parquet"] = _latents_table(counts, graph, labels, latent_ids)
    if graph is not None:
        table = community_table(graph, labels)
        sizes = table["size"] if len(table) else pd.Series([0])
        m.update({"cooc.edge_threshold": graph.threshold, "cooc.n_edges": float(len(graph.i)),
                  "cooc.n_graph_latents": float(np.sum(graph.community >= 0)),
                  "cooc.largest_component": float(graph.largest_component),
                  "cooc.n_communities": float(len(table)), "cooc.largest_community": float(sizes.max()),
                  "cooc.modularity": graph.modularity,
                  "cooc.mean_community_density": float(table["density"].mean()) if len(table) else float("nan")})
        result.tables["tables/cooc_communities.parquet"] = table
        nxg = _networkx(graph, counts, labels)
        result.files["cooc/communities.graphml"] = graphml_bytes(nxg)
        degrees = np.bincount(np.concatenate([graph.i, graph.j]), minlength=counts.d_sae)[alive]
        result.figures["plots/cooc_degree.png"] = plots.plot_degree_distribution(
            degrees, f"dictionary graph degrees ({CoocMeasure(cfg.measure).value} >= {graph.threshold:.3g})")
        result.figures["plots/cooc_communities.png"] = plots.plot_dictionary_communities(
            nxg, table["community"].tolist()[:N_DRAWN], seed)
    if network is not None:
        result.merge(h4_statistics(network, counts, graph.community if graph else None, cfg.measure,
                                   cfg.n_permutations, cfg.n_matched, cfg.density_bins, seed))
    return graph, result


def _graph(w: sparse.csr_matrix, cfg: CooccurrenceConfig, seed: int) -> DictionaryGraph:
    if cfg.edge_threshold == "auto":
        threshold, size = auto_threshold(w, cfg.auto_min_size, cfg.auto_max_size)
        return build_dictionary_graph(w, threshold, cfg.algorithm, cfg.resolution, seed, size)
    threshold = float(cfg.edge_threshold)
    largest = float(w.data.max()) if w.nnz else 0.0
    if largest < threshold:
        raise FeatsweepError(f"cooccurrence.edge_threshold={cfg.edge_threshold} leaves no edge (the largest "
                             f"{CoocMeasure(cfg.measure).value} is {largest:.4g}): lower it, or use cooccurrence.edge_threshold=auto.")
    return build_dictionary_graph(w, threshold, cfg.algorithm, cfg.resolution, seed)


def _latents_table(counts: Counts, graph: Optional[DictionaryGraph], labels: dict, latent_ids: np.ndarray
                   ) -> pd.DataFrame:
    degree = (np.bincount(np.concatenate([graph.i, graph.j]), minlength=counts.d_sae) if graph is not None
              else np.zeros(counts.d_sae, np.int64))
    community = graph.community if graph is not None else np.full(counts.d_sae, -1)
    return pd.DataFrame({"latent": latent_ids, "count": counts.per_latent[latent_ids],
                         "density": counts.per_latent[latent_ids] / max(counts.n_units, 1),
                         "degree": degree[latent_ids], "community": community[latent_ids],
                         "label": [labels.get(int(i), "") for i in latent_ids]})


def _networkx(graph: DictionaryGraph, counts: Counts, labels: dict) -> nx.Graph:
    """The latents that have an edge, with community, firing density and logit-lens label; edges weighted."""
    g = nx.Graph()
    for latent in np.flatnonzero(graph.community >= 0):
        g.add_node(int(latent), community=int(graph.community[latent]), label=labels.get(int(latent), ""),
                   density=float(counts.per_latent[latent] / max(counts.n_units, 1)))
    g.add_edges_from((int(a), int(b), {"weight": float(x)}) for a, b, x in zip(graph.i, graph.j, graph.w))
    return g
