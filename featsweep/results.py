"""What a stage hands back to the pipeline: numbers, tables, figures and files to log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd


@dataclass
class StageResult:
    """Outputs of one stage, keyed by their MLflow artifact path (e.g. ``tables/x.parquet``)."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # matplotlib Figures
    files: dict[str, Path] = field(default_factory=dict)  # files already written locally
    tags: dict[str, str] = field(default_factory=dict)
    skip_reason: Optional[str] = None  # set when later stages cannot run; the reason is tagged
