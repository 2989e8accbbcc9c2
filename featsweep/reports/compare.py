"""Cross-run analysis: what a sweep answers, on one page.

    python -m featsweep.reports.compare                      # the newest sweep in ./mlflow.db
    python -m featsweep.reports.compare --parent RUN_ID
    python -m featsweep.reports.compare --sweep multirun/2026-11-25/10-00-00
    python -m featsweep.reports.compare --experiment featsweep --filter "params.steering.mode = 'negative'"

For the runs of a sweep it writes, under ``compare/`` (and logs to the sweep's parent run):

- ``summary.csv``: one row per job, the swept dimensions first, then the ``h1/h2/h3.verdict`` tags and the
  headline metrics of H1-H3;
- ``summary_full.csv``: every metric of every job, with p-values also Bonferroni-corrected across the sweep
  (``<p>.sweep_adj``);
- ``hypotheses.png``: the headline statistics against each swept dimension, as small multiples;
- ``report.html``: the figure, the table and the metrics that did not vary, readable in MLflow's artifact view.

On the parent run itself it logs the swept dimensions as params (``steering.factor = 1,10,30``) and the range
of each headline metric across the sweep as metrics (``sweep.h2.p.min``), so the runs table shows them.
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
from mlflow.entities import Metric, Param

from featsweep.errors import FeatsweepError
from featsweep.reports.figures import plot_hypotheses
from featsweep.hypotheses.stats import adjust_pvalues
from featsweep.tracking.store import mask
from featsweep.reports.sweep_report import render_report, report_link, ui_command
from featsweep.tracking.run import client_for
from featsweep.reports.layers import layer_section

# The statistics that answer H1-H3 (and the context needed to read them), in the order they are shown: the
# numbers the verdict rules of featsweep.verdicts read. Every name is one that runs log (tests/test_glossary.py).
HEADLINE = [
    "task.accuracy", "steering.single.mean_prob", "steering.linear_vs_exact_r",
    "network.n_edges", "h1.null_edges_mean", "network.n_kept_clusters", "h1.matched_modularity_z",
    "h1.matched_modularity_p", "h1.bootstrap_ari_mean",
    "h2.within.mean_prob", "h2.between.mean_prob", "h2.random.mean_prob", "h2.diff", "h2.p",
    "h2.within_vs_random.diff", "h2.within_vs_random.p",
    "h3.degree.p_adj", "h3.betweenness.p_adj", "h3.closeness.p_adj", "h3.eigenvector.p_adj",
    "h4.statistic", "h4.perm_p", "h4.matched_p", "h4.ami",
]
VERDICTS = ["h1.verdict", "h2.verdict", "h3.verdict", "h4.verdict"]
HYPOTHESIS_PREFIXES = ("metrics.h1.", "metrics.h2.", "metrics.h3.", "metrics.h4.")
# Parameters that never define a sweep dimension (paths and bookkeeping).
IGNORED_PARAMS = ("params.tracking.", "params.cache.")
SHORT_COLUMNS = 8  # headline columns printed by the CLI
SKIPPED_TAG = "featsweep.skipped."  # on a parent: a job skipped because this identical run had FINISHED


def is_p_value(column: str) -> bool:
    name = column.rsplit(".", 1)[-1]
    return name in ("p", "p_partial") or name.endswith("_p") or name.endswith("p_adj")


def collect_runs(client, experiment_ids: list[str], parent: Optional[str] = None, filter_string: str = "") -> pd.DataFrame:
    """The FINISHED job runs: those attached to ``parent`` (whenever they ran) and the identical FINISHED runs
    that stood in for its skipped jobs (``featsweep.skipped.<hash>`` tags), or the runs matching the filter."""
    mlflow.set_tracking_uri(client.tracking_uri)  # search_runs reads the global URI: point it at this store
    clauses = [f"tags.`mlflow.parentRunId` = '{parent}'"] if parent else []
    if filter_string:
        clauses.append(filter_string)
    runs = mlflow.search_runs(experiment_ids=experiment_ids, filter_string=" and ".join(clauses), max_results=50000)
    stand_ins = [v for k, v in client.get_run(parent).data.tags.items() if k.startswith(SKIPPED_TAG)] if parent else []
    if stand_ins:
        ids = ", ".join(f"'{run_id}'" for run_id in stand_ins)
        extra = mlflow.search_runs(experiment_ids=experiment_ids, filter_string=f"attributes.run_id IN ({ids})")
        runs = pd.concat([runs, extra], ignore_index=True).drop_duplicates("run_id") if len(runs) else extra
    if "tags.featsweep.role" in runs:
        runs = runs[runs["tags.featsweep.role"] != "sweep"]
    return runs[runs["status"] == "FINISHED"].reset_index(drop=True) if len(runs) else runs


def swept_dimensions(runs: pd.DataFrame) -> list[str]:
    params = [c for c in runs.columns if c.startswith("params.") and not c.startswith(IGNORED_PARAMS)]
    return [c for c in params if runs[c].astype(str).nunique(dropna=False) > 1]


def full_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: swept dimensions, every metric, verdict tags, and p-values corrected across the sweep."""
    dims = swept_dimensions(runs)
    metrics = sorted(c for c in runs.columns if c.startswith("metrics."))
    verdicts = [f"tags.{v}" for v in VERDICTS if f"tags.{v}" in runs]
    table = runs[[*dims, *verdicts, *metrics]].copy()
    table.insert(len(dims), "run_name", runs.get("tags.mlflow.runName", runs["run_id"]))
    table["run_id"] = runs["run_id"]
    adjusted = {}
    for column in [m for m in metrics if m.startswith(HYPOTHESIS_PREFIXES) and is_p_value(m)]:
        present = table[column].notna()
        if present.any():  # Bonferroni across the runs of the sweep (the blog's correction across factors)
            adjusted[f"{column}.sweep_adj"] = pd.Series(adjust_pvalues(table.loc[present, column].to_numpy()),
                                                        index=table.index[present])
    table = pd.concat([table, pd.DataFrame(adjusted, index=table.index)], axis=1)  # at once: no fragmented frame
    table.columns = [c.removeprefix("metrics.").removeprefix("params.").removeprefix("tags.") for c in table.columns]
    dims = [d.removeprefix("params.") for d in dims]
    for dim in dims:  # numeric dimensions sort and plot as numbers
        converted = pd.to_numeric(table[dim], errors="coerce")
        if converted.notna().all():
            table[dim] = converted
    return (table.sort_values(dims).reset_index(drop=True) if dims else table), dims


def headline_table(table: pd.DataFrame, dims: list[str]) -> pd.DataFrame:
    """summary.csv: the swept dimensions first, then the per-run verdicts and the headline metrics, then the run."""
    present = [c for c in VERDICTS + HEADLINE if c in table and table[c].notna().any()]  # no empty columns
    return table[[*dims, *present, "run_name", "run_id"]]


def varying(table: pd.DataFrame, columns: list[str]) -> tuple[list[str], dict[str, object]]:
    """Split columns into those that vary across the runs and those that do not (with their one value)."""
    changing, constant = [], {}
    for c in columns:
        values = table[c].dropna()
        if values.nunique() > 1:
            changing.append(c)
        elif len(values):
            constant[c] = values.iloc[0]
    return changing, constant


def log_parent_summary(client, parent: str, table: pd.DataFrame, dims: list[str]) -> None:
    """Swept dimensions as params and each headline metric's range as metrics, on the parent run itself."""
    logged = client.get_run(parent).data.params
    wanted = {"sweep.dimensions": ",".join(dims) or "(none)", "sweep.n_runs": str(len(table))}
    for dim in dims:
        wanted[dim] = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(table[dim].dropna().unique()))
    params, changed = [], {}
    for key, value in wanted.items():
        value = value[:6000]
        if key not in logged:
            params.append(Param(key[:250], value))
        elif logged[key] != value:  # params cannot change: a sweep resumed with more jobs keeps the new value as a tag
            changed[f"featsweep.sweep_param.{key}"] = value
    metrics = [Metric("sweep.n_runs", float(len(table)), 0, 0)]
    for column in [c for c in HEADLINE if c in table and table[c].notna().any()]:
        metrics += [Metric(f"sweep.{column}.min", float(table[column].min()), 0, 0),
                    Metric(f"sweep.{column}.max", float(table[column].max()), 0, 0)]
        if f"{column}.sweep_adj" in table:
            metrics.append(Metric(f"sweep.{column}.min_sweep_adj", float(table[f"{column}.sweep_adj"].min()), 0, 0))
    client.log_batch(parent, metrics=metrics, params=params)
    for key, value in changed.items():
        client.set_tag(parent, key, value)


def write_summary(client, runs: pd.DataFrame, out_dir: Path, parent: Optional[str] = None, title: str = "") -> pd.DataFrame:
    """Write (and, with a parent, log) summary.csv, summary_full.csv, hypotheses.png and report.html."""
    if runs.empty:
        raise FeatsweepError("No FINISHED runs matched: check --parent/--sweep/--experiment and --filter (compare needs at least one run).")
    table, dims = full_table(runs)
    summary = headline_table(table, dims)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "summary.csv", index=False)
    table.to_csv(out_dir / "summary_full.csv", index=False)
    shown, constant = varying(table, [c for c in HEADLINE + VERDICTS if c in table])
    figure = plot_hypotheses(table, dims or ["run_name"], shown, constant, title=title)
    figure.savefig(out_dir / "hypotheses.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    links = {r.run_id: report_link(str(r.artifact_uri), str(r.experiment_id), r.run_id) for r in runs.itertuples()}
    overrides = client.get_run(parent).data.tags.get("featsweep.sweep_overrides", "") if parent else ""
    extra = layer_section(client, table, dims, out_dir, overrides)  # "" unless sae.layer was swept
    (out_dir / "report.html").write_text(render_report(summary, dims, constant, out_dir / "hypotheses.png", title, links,
                                                       extra))
    if parent:
        client.log_artifacts(parent, str(out_dir), "compare")
        client.set_tag(parent, "featsweep.compare.n_runs", str(len(table)))
        client.set_tag(parent, "featsweep.compare.dimensions", ",".join(dims) or "(none)")
        log_parent_summary(client, parent, table, dims)
    return summary


def summarize_sweep(client, parent: str) -> pd.DataFrame:
    """Called at the end of a multirun: summarize every job attached to the parent into the parent run."""
    run = client.get_run(parent)
    runs = collect_runs(client, [run.info.experiment_id], parent=parent)
    if runs.empty:
        return runs
    out_dir = Path(run.data.tags.get("featsweep.sweep_dir", ".")) / "compare"
    return write_summary(client, runs, out_dir, parent, title=run.info.run_name or "")


def find_sweep_parent(client, experiment_ids: list[str], sweep_dir: Optional[str] = None) -> str:
    """The parent run of a sweep folder, or (without one) the newest sweep of the experiment."""
    clause = "tags.`featsweep.role` = 'sweep'"
    if sweep_dir:
        clause = f"tags.`featsweep.sweep_dir` = '{Path(sweep_dir).resolve()}'"
    runs = client.search_runs(experiment_ids, filter_string=clause, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        where = f"with featsweep.sweep_dir={Path(sweep_dir).resolve()}" if sweep_dir else "in this store"
        raise FeatsweepError(f"No sweep parent run {where}. Run a sweep (python -m featsweep -m steering.factor=1,10,30), "
                             "or pass --parent RUN_ID or --experiment NAME.")
    return runs[0].info.run_id


def short_table(summary: pd.DataFrame, dims: list[str]) -> str:
    """A terminal-width view: the dimensions, then the headline columns that vary (at most SHORT_COLUMNS)."""
    shown, _ = varying(summary, [c for c in summary.columns if c not in dims and c not in ("run_name", "run_id")])
    columns = [*(dims or ["run_name"]), *shown[:SHORT_COLUMNS]]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3g}".format):
        return summary[columns].to_string(index=False)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featsweep.reports.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
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
        if args.uri.startswith("sqlite:///") and not Path(args.uri.removeprefix("sqlite:///")).exists():
            raise FeatsweepError(f"No MLflow store at {args.uri}. Run featsweep in this folder first, or pass --uri.")
        client = client_for(args.uri)
        name = args.experiment or args.tracking_experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise FeatsweepError(f"No experiment '{name}' in {mask(args.uri)}. Check --uri and the experiment name.")
        ids = [experiment.experiment_id]
        parent = args.parent
        if not parent and not args.experiment:
            parent = find_sweep_parent(client, ids, args.sweep)
        if parent:
            try:
                parent_run = client.get_run(parent)
            except Exception:
                raise FeatsweepError(f"Unknown run id {parent} in {mask(args.uri)}.") from None
        runs = collect_runs(client, ids, parent=parent, filter_string=args.filter)
        out_dir = Path(args.out) if args.out else Path("compare") / (parent or name)
        title = (parent_run.info.run_name or "") if parent else f"experiment {name}"
        summary = write_summary(client, runs, out_dir, parent, title=title)
    except FeatsweepError as err:
        print(f"featsweep.reports.compare: error: {err}", file=sys.stderr)
        return 1
    dims = [c for c in summary.columns if c not in HEADLINE + VERDICTS + ["run_name", "run_id"]]
    print(f"{title}: {len(summary)} runs" + (f" (parent run {parent})" if parent else ""))
    print(short_table(summary, dims))
    print(f"\nAll headline columns: {out_dir / 'summary.csv'}; every metric: {out_dir / 'summary_full.csv'}")
    print(f"One page: {out_dir / 'report.html'} (figure: {out_dir / 'hypotheses.png'})"
          + (f", also logged to parent run {parent} under compare/" if parent else ""))
    print(f"Open the UI: {ui_command(args.uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
