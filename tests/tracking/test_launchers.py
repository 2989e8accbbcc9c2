"""Slow tier: real launchers (submitit_local, joblib) and a real MLflow tracking server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from helpers import QUICK, TASK_METRICS, artifacts, mlflow_runs, run_featsweep
from servers import free_port

pytestmark = pytest.mark.slow


def test_submitit_local_multirun_makes_parent_and_children(tmp_path):
    proc = run_featsweep(tmp_path, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *QUICK, "task.limit=6,8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    parent = runs[runs["tags.featsweep.role"] == "sweep"]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(children) == 2
    assert (children["tags.mlflow.parentRunId"] == parent.iloc[0]["run_id"]).all()
    assert (children["status"] == "FINISHED").all()


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{server_dir}/mlflow.db", "--artifacts-destination", str(server_dir / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"),
    )
    uri = f"http://127.0.0.1:{port}"
    import requests

    for _ in range(120):
        try:
            if requests.get(f"{uri}/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_joblib_multirun_against_a_tracking_server_loses_nothing(tmp_path, mlflow_server):
    work = tmp_path / "work"
    work.mkdir()
    limits = ["5", "6", "7", "8"]
    proc = run_featsweep(work, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "tracking=server",
                         f"tracking.uri={mlflow_server}", *QUICK, f"task.limit={','.join(limits)}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["featsweep"])
    parent = runs[runs["tags.featsweep.role"] == "sweep"]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(children) == 4
    assert (children["status"] == "FINISHED").all()
    assert sorted(children["params.task.limit"]) == limits
    for metric in TASK_METRICS:
        assert children[f"metrics.{metric}"].notna().all(), metric
    client = MlflowClient(mlflow_server)
    for run_id in children["run_id"]:
        assert {"config/config.yaml", "tables/task_baseline.parquet"} <= artifacts(client, run_id)
    assert not (work / "mlflow.db").exists()  # everything went to the server
