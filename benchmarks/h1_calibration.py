"""Calibration of H1's graph-aware nulls (``h1.<metric>.null_p``, ``matched_null_p``) against the nominal ANOVA p-values.

A planted matrix with NO cluster structure (independent normal features) goes through the network stage's
clustering and H1 tests; under this null a valid test rejects at p < 0.05 in at most 5% of repeats.
Usage: python benchmarks/h1_calibration.py [repeats] [n_rewire] [n_prompts] [n_features] [centrality_sources]
(a small ``centrality_sources``, e.g. 6, puts the tests' sampled betweenness and closeness to the same check).
"""

from __future__ import annotations

import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from featsweep.config import ClusteringConfig
from featsweep.hypotheses.h1 import h1_statistics
from featsweep.stages.network import build_network

CENTRALITY = ["degree", "betweenness", "closeness", "eigenvector"]


def calibration(repeats: int, n_rewire: int, n_prompts: int = 60, n_features: int = 30, threshold: float = 0.2,
                min_cluster_size: int = 3, centrality_sources: int = 256) -> pd.DataFrame:
    cfg = ClusteringConfig(threshold=threshold, min_cluster_size=min_cluster_size, n_null=n_rewire, n_bootstrap=0, n_continuum=0,
                           n_rewire=n_rewire, centrality_sources=centrality_sources)
    rows = []
    for rep in range(repeats):
        rng = np.random.default_rng([rep, 11])
        matrix = pd.DataFrame(rng.normal(size=(n_prompts, n_features)))
        network = build_network(matrix, cfg, rep, None, None)
        if len(network.kept_clusters) < 2:
            continue
        metrics = h1_statistics(network, cfg, rep, has_gen_max=False, progress=False).metrics
        plt.close("all")
        for metric in CENTRALITY + ["abs_corr", "std"]:
            rows.append({"repeat": rep, "metric": metric, "nominal_p": metrics[f"h1.{metric}.anova_p"],
                         "null_p": metrics[f"h1.{metric}.null_p"], "kruskal_null_p": metrics[f"h1.{metric}.kruskal_null_p"],
                         "matched_null_p": metrics[f"h1.{metric}.matched_null_p"],
                         "both": max(metrics[f"h1.{metric}.null_p"], metrics[f"h1.{metric}.matched_null_p"])})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    repeats, n_rewire = (args + [200, 99])[:2]
    extra = dict(zip(["n_prompts", "n_features", "centrality_sources"], args[2:]))
    t0 = time.perf_counter()
    table = calibration(repeats, n_rewire, **extra)
    rates = table.groupby("metric")[["nominal_p", "null_p", "kruskal_null_p", "matched_null_p", "both"]].agg(lambda p: float((p < 0.05).mean()))
    print(f"{table['repeat'].nunique()} repeats with >= 2 kept clusters, n_rewire={n_rewire}, {extra}, "
          f"{time.perf_counter() - t0:.0f} s. Fraction of repeats with p < 0.05:")
    print(rates.to_string(float_format=lambda v: f"{v:.3f}"))
    for column in ("nominal_p", "null_p", "matched_null_p", "both"):
        low = table[table["metric"].isin(CENTRALITY)].groupby("repeat")[column].min()
        print(f"any centrality {column} < 0.05 (uncorrected, 4 tests): {float((low < 0.05).mean()):.3f}")
