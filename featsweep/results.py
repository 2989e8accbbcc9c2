"""What a stage hands back to the pipeline: numbers, tables, figures and files to log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import networkx as nx
import pandas as pd

# per prompt, what the task and every steering condition measure (task.performance, the intervention engine)
PERFORMANCE_COLUMNS = ["prob", "rank", "logit", "top10_entropy", "logit_diff"]


@dataclass
class StageResult:
    """Outputs of one stage, keyed by their MLflow artifact path (e.g. ``tables/x.parquet``)."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # matplotlib Figures
    files: dict[str, bytes] = field(default_factory=dict)  # other artifacts (e.g. the graph), as their bytes
    tags: dict[str, str] = field(default_factory=dict)
    skip_reason: Optional[str] = None  # set when later stages cannot run; the reason is tagged

    def merge(self, other: "StageResult") -> None:
        """Add another result's outputs to this one (a stage built from named steps)."""
        self.metrics.update(other.metrics)
        self.tables.update(other.tables)
        self.figures.update(other.figures)
        self.files.update(other.files)
        self.tags.update(other.tags)
        self.skip_reason = self.skip_reason or other.skip_reason


@dataclass
class Network:
    """What the network stage hands to steering."""

    matrix: pd.DataFrame  # prompts x features used (constant features dropped)
    corr: pd.DataFrame  # features x features
    graph: nx.Graph  # nodes = int feature ids, attributes = the features-table columns
    partition: dict[int, int]  # feature -> cluster id, 0 = largest cluster
    kept_clusters: list[int]  # clusters with size >= min_cluster_size (inclusive)
    features: pd.DataFrame  # one row per feature (FEATURE_COLUMNS)
    modularity: float = float("nan")
    eigenvector_method: str = "undefined"
