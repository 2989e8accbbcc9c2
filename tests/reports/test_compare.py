"""Run names, the sweep's one page (summary, figure, report, parent params/metrics), the end-of-run messages
and `python -m featsweep.reports.compare` without arguments, on real multiruns into a real SQLite store."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from featsweep.hypotheses import verdicts
from featsweep.reports.compare import full_table, headline_table, varying
from featsweep.tracking.naming import parent_run_name, swept_keys
from featsweep.reports.figures import plot_hypotheses
from featsweep.reports.sweep_report import verdict_rules_html
from helpers import QUICK, artifacts, mlflow_runs, run_featsweep

SWEEP = ["-m", *QUICK, "task.limit=5", "steering.factor=1,10"]


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("quick_sweep")
    proc = run_featsweep(work, *SWEEP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


def test_swept_keys_are_the_overrides_with_several_values():
    assert swept_keys(["steering.factor=1,10,30", "task.limit=5", "sae.layer=range(2,4)"]) == ["steering.factor", "sae.layer"]
    assert parent_run_name(["steering.factor=1,10", "task.limit=5"], "unused") == "sweep steering.factor=1,10"


def test_jobs_are_named_by_what_distinguishes_them_and_the_parent_by_the_sweep(quick_sweep):
    work, _ = quick_sweep
    runs = mlflow_runs(work)
    parent = runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]
    jobs = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert sorted(jobs["tags.mlflow.runName"]) == ["steering.factor=1", "steering.factor=10"]  # not task.limit=5
    assert parent["tags.mlflow.runName"] == "sweep steering.factor=1,10"
    for note in [parent["tags.mlflow.note.content"], *jobs["tags.mlflow.note.content"]]:
        assert "steering.factor=1,10" in note and "experiment=organism" in note


@pytest.mark.slow  # 20-40 s of featsweep processes: slow tier (CI runs it), to keep the default tier near 10 min
def test_single_run_is_named_from_its_overrides_or_its_preset(tmp_path):
    proc = run_featsweep(tmp_path, *QUICK, "task.limit=5", "tracking.skip_finished=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_featsweep(tmp_path, *QUICK, "task.limit=5", "tracking.run_name=mine", "tracking.skip_finished=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = set(mlflow_runs(tmp_path)["tags.mlflow.runName"])
    assert names == {"stages=[task] task.limit=5", "mine"}  # tracking.* overrides do not name a run
    assert "Open the UI: " in proc.stderr + proc.stdout and "ui --backend-store-uri" in proc.stderr + proc.stdout
    # the UI opens on the runs table, and the message links the runs page and says where "Model training" is
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("featsweep")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    out = proc.stderr + proc.stdout
    assert f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs\n" in out and '"Model training"' in out


def test_the_reading_guide_is_the_verdict_module():
    rules = verdict_rules_html()
    for text in ("<b>H1, clusters are distinct</b>", "<code>h1.matched_modularity_p &lt; ALPHA</code>",
                 "<code>h2.within_vs_random.p</code>", "<code>h3.&lt;c&gt;.p_partial &lt; ALPHA</code>",
                 f"<code>ALPHA</code> = {verdicts.ALPHA}"):
        assert text in rules
    assert rules.count("<li>") == 4  # one rule per hypothesis, H1-H4


def test_a_run_logs_csv_tables_its_task_as_a_dataset_and_who_ran_what(quick_sweep):
    work, _ = quick_sweep
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = mlflow_runs(work)
    job = client.get_run(runs[runs["tags.mlflow.parentRunId"].notna()].iloc[0]["run_id"])
    assert {"tables/task_baseline.csv", "tables/task_baseline.parquet"} <= artifacts(client, job.info.run_id)
    table = pd.read_csv(client.download_artifacts(job.info.run_id, "tables/task_baseline.csv", str(work)))
    assert len(table) == 5
    [dataset] = job.inputs.dataset_inputs
    assert dataset.dataset.name == job.data.params["task.name"] and [t.value for t in dataset.tags] == ["task"]
    assert '"num_rows": 5' in dataset.dataset.profile
    tags = job.data.tags
    assert tags["featsweep.model.name"] == "organism:organism" and tags["featsweep.sae.hook_name"].startswith("blocks.")
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"


def test_parent_logs_the_one_page_and_its_dimensions(quick_sweep):
    work, proc = quick_sweep
    runs = mlflow_runs(work)
    parent = runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    logged = artifacts(client, parent["run_id"])
    assert {"compare/summary.csv", "compare/summary_full.csv", "compare/hypotheses.png", "compare/report.html"} <= logged
    assert not any(p.startswith("compare/plots/") for p in logged)  # no directory of one PNG per metric
    summary = pd.read_csv(client.download_artifacts(parent["run_id"], "compare/summary.csv", str(work)))
    # dimensions first, then the verdicts, then the headline
    assert list(summary.columns[:6]) == ["steering.factor", "h1.verdict", "h2.verdict", "h3.verdict", "h4.verdict",
                                         "task.accuracy"]
    assert summary["steering.factor"].tolist() == [1.0, 10.0]
    assert parent["params.steering.factor"] == "1,10" and parent["params.sweep.dimensions"] == "steering.factor"
    assert parent["metrics.sweep.n_runs"] == 2
    assert parent["metrics.sweep.task.accuracy.min"] == summary["task.accuracy"].min()
    html = (work / next((work / "multirun").glob("*/*")) / "compare" / "report.html").read_text()
    assert "data:image/png;base64," in html and "steering.factor" in html
    assert verdict_rules_html() in html and "effect_size" not in html  # the rules of featsweep/hypotheses/verdicts.py
    assert f"parent run {parent['run_id']}" in proc.stdout and "summary.csv" in proc.stdout
    assert "ui --backend-store-uri" in proc.stdout and "--port" in proc.stdout


def test_compare_without_arguments_summarises_the_newest_sweep(quick_sweep):
    work, _ = quick_sweep
    proc = run_featsweep(work, module="featsweep.reports.compare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep steering.factor=1,10: 2 runs" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) < 250  # a short table, not 200 columns


def test_compare_without_a_store_says_so(tmp_path):
    proc = run_featsweep(tmp_path, module="featsweep.reports.compare")
    assert proc.returncode == 1 and "No MLflow store" in proc.stderr


def test_hypotheses_figure_leaves_out_what_does_not_vary():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "status": "FINISHED", "tags.mlflow.runName": ["x", "y", "z"],
                         "params.steering.factor": ["1.0", "10.0", "30.0"], "params.seed": "0",
                         "metrics.h2.p": [0.5, 0.01, 0.2], "metrics.network.n_edges": [10.0, 10.0, 10.0],
                         "tags.h2.verdict": ["not supported", "supported", "not supported"]})
    table, dims = full_table(runs)
    assert dims == ["steering.factor"]
    assert list(headline_table(table, dims).columns[:4]) == ["steering.factor", "h2.verdict", "network.n_edges", "h2.p"]
    assert table["h2.p.sweep_adj"].tolist() == pytest.approx([1.0, 0.03, 0.6])  # Bonferroni across the 3 runs
    shown, constant = varying(table, ["network.n_edges", "h2.p", "h2.verdict"])
    assert shown == ["h2.p", "h2.verdict"] and constant == {"network.n_edges": 10.0}
    fig = plot_hypotheses(table, dims, shown, constant)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "30"] and ax.get_xscale() == "log"
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["not supported", "supported"]  # the verdicts
    assert "network.n_edges=10" in " ".join(t.get_text() for t in fig.texts)


@pytest.mark.slow  # 20-40 s of featsweep processes: slow tier (CI runs it), to keep the default tier near 10 min
def test_a_sweep_after_a_single_run_summarises_the_run_that_stood_in_for_its_skipped_job(tmp_path):
    proc = run_featsweep(tmp_path, *QUICK, "task.limit=5", "steering.factor=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_featsweep(tmp_path, "-m", *QUICK, "task.limit=5", "steering.factor=1,10,30")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    parent = runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]
    # factor 10 was skipped (resume) and its earlier run, which had no parent, adopted by the sweep
    assert (runs["tags.mlflow.parentRunId"] == parent["run_id"]).sum() == 3
    assert (runs["tags.featsweep.adopted_by"] == parent["run_id"]).sum() == 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    summary = pd.read_csv(client.download_artifacts(parent["run_id"], "compare/summary.csv", str(tmp_path)))
    assert summary["steering.factor"].tolist() == [1.0, 10.0, 30.0]
    assert parent["params.steering.factor"] == "1,10,30"
