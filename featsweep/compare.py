"""Cross-run analysis: one table of the H1-H3 metrics of a sweep, corrected across the sweep, with plots.

    python -m featsweep.compare --parent RUN_ID
    python -m featsweep.compare --sweep multirun/2026-11-25/10-00-00
    python -m featsweep.compare --experiment featsweep --filter "params.steering.mode = 'negative'"

Writes ``compare/summary.csv`` and ``compare/plots/*.png`` (under --out, default ./compare/<name>),
logs them to the sweep's parent run when there is one, and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from featsweep.errors import FeatsweepError
from featsweep.plots import metric_vs_dimension
from featsweep.stats import adjust_pvalues
from featsweep.tracking import client_for

HYPOTHESIS_PREFIXES = ("metrics.h1.", "metrics.h2.", "metrics.h3.")
CONTEXT_METRICS = ["metrics.task.accuracy", "metrics.network.n_features", "metrics.network.n_clusters", "metrics.network.modularity"]
# Parameters that never define a sweep dimension (paths and bookkeeping).
IGNORED_PARAMS = ("params.tracking.", "params.cache.")


def is_p_value(column: str) -> bool:
    name = column.rsplit(".", 1)[-1]
    return name in ("p", "p_partial") or name.endswith("_p") or name.endswith("p_adj")


def collect_runs(client, experiment_ids: list[str], parent: Optional[str] = None, filter_string: str = "") -> pd.DataFrame:
    mlflow.set_tracking_uri(client.tracking_uri)  # search_runs reads the global URI: point it at this store
    clauses = [f"tags.`mlflow.parentRunId` = '{parent}'"] if parent else []
    if filter_string:
        clauses.append(filter_string)
    runs = mlflow.search_runs(experiment_ids=experiment_ids, filter_string=" and ".join(clauses), max_results=50000)
    if "tags.featsweep.role" in runs:
        runs = runs[runs["tags.featsweep.role"] != "sweep"]
    return runs[runs["status"] == "FINISHED"].reset_index(drop=True) if len(runs) else runs


def swept_dimensions(runs: pd.DataFrame) -> list[str]:
    params = [c for c in runs.columns if c.startswith("params.") and not c.startswith(IGNORED_PARAMS)]
    return [c for c in params if runs[c].astype(str).nunique(dropna=False) > 1]


def summary_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: swept dimensions, hypothesis metrics, and p-values corrected across the sweep."""
    dims = swept_dimensions(runs)
    metrics = sorted(c for c in runs.columns if c.startswith(HYPOTHESIS_PREFIXES))
    context = [c for c in CONTEXT_METRICS if c in runs.columns]
    table = runs[["run_id", *dims, *context, *metrics]].copy()
    for column in [m for m in metrics if is_p_value(m)]:
        present = table[column].notna()
        if present.any():  # Bonferroni across the runs of the sweep (the blog's correction across factors)
            table.loc[present, f"{column}.sweep_adj"] = adjust_pvalues(table.loc[present, column].to_numpy())
    table.columns = [c.removeprefix("metrics.").removeprefix("params.") for c in table.columns]
    dims = [d.removeprefix("params.") for d in dims]
    for dim in dims:  # numeric dimensions sort and plot as numbers
        converted = pd.to_numeric(table[dim], errors="coerce")
        if converted.notna().all():
            table[dim] = converted
    return table.sort_values(dims).reset_index(drop=True) if dims else table, dims


def plot_summary(table: pd.DataFrame, dims: list[str], out_dir: Path) -> list[Path]:
    headline = [c for c in table.columns if c.startswith(("h1.", "h2.", "h3.")) and not c.endswith("sweep_adj")]
    paths = []
    for dim in dims:
        for metric in headline:
            if table[metric].notna().sum() < 1:
                continue
            fig = metric_vs_dimension(table, dim, metric)
            path = out_dir / "plots" / f"{metric}__vs__{dim}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=100, bbox_inches="tight")

            plt.close(fig)
            paths.append(path)
    return paths


def write_summary(client, runs: pd.DataFrame, out_dir: Path, parent: Optional[str] = None) -> pd.DataFrame:
    if runs.empty:
        raise FeatsweepError("No FINISHED runs matched: check --parent/--sweep/--experiment and --filter (compare needs at least one run).")
    table, dims = summary_table(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "summary.csv", index=False)
    plot_summary(table, dims, out_dir)
    if parent:
        client.log_artifacts(parent, str(out_dir), "compare")
        client.set_tag(parent, "featsweep.compare.n_runs", str(len(table)))
        client.set_tag(parent, "featsweep.compare.dimensions", ",".join(dims) or "(none)")
    return table


def summarize_sweep(client, parent: str) -> pd.DataFrame:
    """Called at the end of a multirun: summarize the parent's children into the parent run."""
    run = client.get_run(parent)
    runs = collect_runs(client, [run.info.experiment_id], parent=parent)
    if runs.empty:
        return runs
    out_dir = Path(run.data.tags.get("featsweep.sweep_dir", ".")) / "compare"
    return write_summary(client, runs, out_dir, parent)


def find_sweep_parent(client, experiment_ids: list[str], sweep_dir: str) -> str:
    target = str(Path(sweep_dir).resolve())
    runs = client.search_runs(experiment_ids, filter_string=f"tags.`featsweep.sweep_dir` = '{target}'", max_results=1)
    if not runs:
        raise FeatsweepError(f"No sweep parent run has featsweep.sweep_dir={target}. Pass --parent RUN_ID or --experiment instead.")
    return runs[0].info.run_id


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featsweep.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--parent", help="a sweep's parent run id")
    which.add_argument("--sweep", help="a sweep directory (multirun/<date>/<time>)")
    which.add_argument("--experiment", help="all runs of an experiment (with --filter)")
    parser.add_argument("--filter", default="", help="an MLflow filter string, e.g. \"params.steering.mode = 'negative'\"")
    parser.add_argument("--uri", default=f"sqlite:///{os.getcwd()}/mlflow.db", help="tracking URI (default: ./mlflow.db)")
    parser.add_argument("--tracking-experiment", default="featsweep", help="experiment holding the sweep (with --parent/--sweep)")
    parser.add_argument("--out", default=None, help="output folder (default: ./compare/<parent or experiment>)")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        client = client_for(args.uri)
        name = args.experiment or args.tracking_experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise FeatsweepError(f"No experiment '{name}' in {args.uri}. Check --uri and the experiment name.")
        ids = [experiment.experiment_id]
        parent = args.parent or (find_sweep_parent(client, ids, args.sweep) if args.sweep else None)
        if parent:
            try:
                client.get_run(parent)
            except Exception:
                raise FeatsweepError(f"Unknown run id {parent} in {args.uri}.") from None
        runs = collect_runs(client, ids, parent=parent, filter_string=args.filter)
        out_dir = Path(args.out) if args.out else Path("compare") / (parent or name)
        table = write_summary(client, runs, out_dir, parent)
    except FeatsweepError as err:
        print(f"featsweep.compare: error: {err}", file=sys.stderr)
        return 1
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(table.drop(columns=["run_id"]).to_string(index=False))
    print(f"\nWrote {out_dir / 'summary.csv'}" + (f" and logged it to parent run {parent}" if parent else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
