"""Real Hydra runs and multiruns into a real SQLite MLflow store under tmp_path (subprocesses)."""

from __future__ import annotations


import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from helpers import QUICK, TASK_METRICS, artifacts, mlflow_runs, run_featsweep

def test_single_run_logs_config_params_metrics_and_tables(tmp_path):
    proc = run_featsweep(tmp_path, *QUICK, "task.limit=12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.task.limit"] == "12" and run["params.steering.factor"] == "4.0" and run["params.model.source"] == "organism"
    assert run["params.tracking.uri"] == f"sqlite:///{tmp_path}/mlflow.db"  # resolved to an absolute path
    for metric in TASK_METRICS:
        assert pd.notna(run[f"metrics.{metric}"]), metric
    assert run["metrics.task.n_prompts"] == 12
    assert len(run["tags.featsweep.config_hash"]) == 16
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    logged = artifacts(client, run["run_id"])
    assert {"config/config.yaml", "config/overrides.yaml", "tables/task_baseline.parquet"} <= logged
    assert any(p.startswith("logs/") for p in logged)
    table = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="tables/task_baseline.parquet"))
    assert len(table) == 12 and run["metrics.task.accuracy"] == (table["rank"] == 0).mean()
    assert (tmp_path / "mlruns").is_dir()


def test_multirun_makes_one_parent_and_a_child_per_job(tmp_path):
    proc = run_featsweep(tmp_path, "-m", *QUICK, "task.limit=6,8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    parents = runs[runs["tags.featsweep.role"] == "sweep"]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    parent_id = parents.iloc[0]["run_id"]
    assert (children["tags.mlflow.parentRunId"] == parent_id).all()
    assert (children["status"] == "FINISHED").all() and parents.iloc[0]["status"] == "FINISHED"
    assert sorted(children["params.task.limit"]) == ["6", "8"]
    assert sorted(children["metrics.task.n_prompts"]) == [6, 8]
    sweep_dirs = list((tmp_path / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 1 and {p.name for p in sweep_dirs[0].iterdir()} >= {"0", "1"}


def test_a_failing_job_ends_failed_and_the_other_job_finishes(tmp_path):
    proc = run_featsweep(tmp_path, "-m", *QUICK, "task.limit=6", "task.answer_column=sportz,answer")
    assert proc.returncode == 1
    assert "1 of 2 jobs failed" in proc.stderr
    runs = mlflow_runs(tmp_path)
    children = runs[runs["tags.mlflow.parentRunId"].notna()].set_index("params.task.answer_column")
    assert children.loc["answer", "status"] == "FINISHED"
    failed = children.loc["sportz"]
    assert failed["status"] == "FAILED"
    assert "sportz" in failed["tags.featsweep.error"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert {"error.txt", "config/config.yaml"} <= artifacts(client, failed["run_id"])  # what was logged before stays
    assert failed["params.model.source"] == "organism"
    assert runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]["status"] == "FAILED"


def test_a_bad_config_value_in_a_sweep_creates_no_run_and_fails_the_sweep(tmp_path):
    proc = run_featsweep(tmp_path, "-m", *QUICK, "task.limit=1,6")
    assert proc.returncode == 1
    assert "1 of 2 jobs failed" in proc.stderr and "task.limit=1" in proc.stderr
    runs = mlflow_runs(tmp_path)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert children["params.task.limit"].tolist() == ["6"] and children["status"].tolist() == ["FINISHED"]
    assert runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]["status"] == "FAILED"


def test_single_run_error_is_one_line_and_marks_the_run_failed(tmp_path):
    proc = run_featsweep(tmp_path, *QUICK, "task.path=/nope.csv")
    assert proc.returncode == 1
    assert "featsweep: error: task.path=/nope.csv does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    runs = mlflow_runs(tmp_path)
    assert runs.iloc[0]["status"] == "FAILED"


def test_unreachable_tracking_server_is_one_clear_error(tmp_path):
    proc = run_featsweep(tmp_path, *QUICK, "tracking=server", "tracking.uri=http://127.0.0.1:9")
    assert proc.returncode == 1
    assert "cannot be reached" in proc.stderr and "tracking=local" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_featsweep(tmp_path, *QUICK, f"cache.dir={blocker}/cache")
    assert proc.returncode == 1
    assert "cache.dir" in proc.stderr and "Traceback" not in proc.stderr
    assert mlflow_runs(tmp_path).iloc[0]["status"] == "FAILED"


@pytest.mark.slow  # 20-40 s of featsweep processes: slow tier (CI runs it), to keep the default tier near 10 min
def test_compare_and_rerun_bad_input(tmp_path):
    assert run_featsweep(tmp_path, *QUICK, "task.limit=4").returncode == 0
    proc = run_featsweep(tmp_path, "--experiment", "featsweep", "--filter", "params.task.limit = '99'", module="featsweep.reports.compare")
    assert proc.returncode == 1 and "No FINISHED runs matched" in proc.stderr
    proc = run_featsweep(tmp_path, "0123456789abcdef", module="featsweep.rerun")
    assert proc.returncode == 1 and "Unknown run id 0123456789abcdef" in proc.stderr
