"""A PostgreSQL tracking store (tracking=postgres): one line for each way it can be unusable, no password in
anything logged, and (slow tier) a real PostgreSQL server taking a joblib sweep, concurrent runs and a kill -9."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from featsweep.errors import FeatsweepError
from featsweep.tracking.store import check_database, mask
from featsweep.reports.sweep_report import ui_command
from helpers import QUICK, TASK_METRICS, run_featsweep
from servers import PostgresCluster, free_port, postgres_binaries, postgres_missing

TINY = [*QUICK, "task.limit=5"]
needs_driver = pytest.mark.skipif(importlib.util.find_spec("psycopg") is None,
                                  reason="the PostgreSQL driver is missing: pip install 'featsweep[postgres]'")


def one_line_error(proc, fragment: str) -> None:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"featsweep: error: {fragment}" in proc.stderr


def test_mask_hides_the_password_of_every_uri_and_nothing_else():
    text = "tracking.uri=postgresql://fs:s3cr%40t@db:5432/mlflow http://u:p@host/ sqlite:////a/b.db"
    assert mask(text) == "tracking.uri=postgresql://fs:***@db:5432/mlflow http://u:***@host/ sqlite:////a/b.db"
    assert mask("postgresql://fs@db/mlflow") == "postgresql://fs@db/mlflow"  # no password, nothing to hide
    command = ui_command("postgresql://fs:s3cr3t@db:5432/mlflow")
    assert "s3cr3t" not in command and "postgresql://fs:***@db:5432/mlflow" in command


def test_a_missing_driver_is_one_line_naming_the_extra():
    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed here: no missing driver to show")
    with pytest.raises(FeatsweepError, match=r"driver 'pg8000' is not installed.*featsweep\[postgres\]"):
        check_database("postgresql+pg8000://fs:secret@127.0.0.1:5432/mlflow")


@needs_driver
def test_an_unreachable_server_is_one_line_without_the_password(tmp_path):
    uri = f"postgresql://fs:pw-unreachable@127.0.0.1:{free_port()}/mlflow"
    proc = run_featsweep(tmp_path, "tracking=postgres", *TINY, env={"FEATSWEEP_TRACKING_URI": uri})
    one_line_error(proc, "The PostgreSQL server at 127.0.0.1:")
    assert "cannot be reached" in proc.stderr and "FEATSWEEP_TRACKING_URI" in proc.stderr
    assert "pw-unreachable" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlruns").exists()  # nothing ran


# ---- slow tier: a real PostgreSQL server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server (initdb + pg_ctl in a temporary folder, on a free port)."""
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    cluster = PostgresCluster(postgres_binaries())
    print(f"PostgreSQL server running from {cluster.bin} on port {cluster.port}")
    yield cluster
    cluster.stop()


def start(cwd: Path, *args: str, env: dict, name: str) -> subprocess.Popen:
    full = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", HYDRA_FULL_ERROR="0", **env)
    return subprocess.Popen([sys.executable, "-m", "featsweep", *args], cwd=cwd, env=full, start_new_session=True,
                            stdout=open(cwd / f"{name}.out", "w"), stderr=open(cwd / f"{name}.err", "w"))


def output(cwd: Path, name: str) -> str:
    return (cwd / f"{name}.out").read_text() + (cwd / f"{name}.err").read_text()


@pytest.mark.slow
def test_a_database_that_does_not_exist_is_one_line(postgres, tmp_path):
    proc = run_featsweep(tmp_path, "tracking=postgres", *TINY, env={"FEATSWEEP_TRACKING_URI": postgres.uri("nope")})
    one_line_error(proc, "The database 'nope' does not exist on the PostgreSQL server at 127.0.0.1:")
    assert "createdb" in proc.stderr and postgres.PASSWORD not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_joblib_sweep_and_concurrent_runs_survive_a_kill_9_with_nothing_lost(postgres, tmp_path):
    uri = postgres.create_database("sweeps")
    env = {"FEATSWEEP_TRACKING_URI": uri}
    limits = ["5", "6", "7", "8"]
    sweep = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "tracking=postgres", *QUICK,
             f"task.limit={','.join(limits)}"]
    # a fresh database: 5 processes create the schema and the experiment at once, then write side by side
    first = start(tmp_path, *sweep, env=env, name="sweep")
    # (seeds 1-4: a seed-0 run would be the sweep's task.limit=5 job, and be adopted by the sweep)
    singles = [start(tmp_path, "tracking=postgres", *TINY, f"seed={n + 1}", env=env, name=f"single{n}") for n in range(4)]
    client = MlflowClient(uri)

    def running_job():
        try:
            experiment = client.get_experiment_by_name("featsweep")
            runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
        except Exception:  # the schema is still being created
            return None
        return next((r for r in runs if "mlflow.parentRunId" in r.data.tags and "featsweep.pid" in r.data.tags), None)

    deadline, held = time.time() + 600, None
    while held is None and first.poll() is None and time.time() < deadline:
        job = running_job()
        if job is not None:
            pid = int(job.data.tags["featsweep.pid"])
            os.kill(pid, signal.SIGSTOP)  # hold it, so that it is killed while its run is open
            if client.get_run(job.info.run_id).info.status == "RUNNING":
                held = job
            else:  # it finished in between: let it go on, try the next one
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    assert held is not None, output(tmp_path, "sweep")[-3000:]
    job = held
    os.kill(pid, signal.SIGKILL)
    first.wait(timeout=600)
    assert [p.wait(timeout=600) for p in singles] == [0, 0, 0, 0], [output(tmp_path, f"single{n}")[-1500:] for n in range(4)]

    again = run_featsweep(tmp_path, *sweep, env=env, timeout=900)  # the same command resumes the sweep
    assert again.returncode == 0, again.stderr[-3000:]
    experiment = client.get_experiment_by_name("featsweep")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs([experiment.experiment_id], max_results=1000)
    assert (runs["status"] != "RUNNING").all()  # the killed job's run was closed, not left RUNNING
    assert runs.loc[runs["run_id"] == job.info.run_id, "status"].item() == "FAILED"
    parents = runs[runs["tags.featsweep.role"] == "sweep"]
    assert len(parents) == 1 and parents["status"].item() == "FINISHED"
    children = runs[(runs["tags.mlflow.parentRunId"] == parents["run_id"].item()) & (runs["status"] == "FINISHED")]
    assert sorted(children["params.task.limit"]) == limits  # every job FINISHED, once
    singles_done = runs[runs["tags.mlflow.parentRunId"].isna() & (runs["tags.featsweep.role"] != "sweep")
                        & (runs["status"] == "FINISHED")]
    assert sorted(singles_done["params.seed"]) == ["1", "2", "3", "4"]
    finished = runs[(runs["status"] == "FINISHED") & (runs["tags.featsweep.role"] != "sweep")]
    assert len(finished) == 8 and finished[[f"metrics.{m}" for m in TASK_METRICS]].notna().all().all()  # no metric lost
    summary = (Path(parents["tags.featsweep.sweep_dir"].item()) / "compare" / "summary.csv").read_text()
    assert len(summary.strip().splitlines()) == 1 + len(limits)

    # the password is in nothing logged: params, tags, descriptions, experiment tags, artifacts, printed output
    logged = [str(v) for _, row in runs.iterrows() for k, v in row.items() if k.startswith(("params.", "tags."))]
    assert logged and not [v for v in logged if postgres.PASSWORD in v]
    assert (finished["params.tracking.uri"] == mask(uri)).all() and postgres.PASSWORD not in str(experiment.tags)
    artifact_files = [p for p in (tmp_path / "mlruns").rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in artifact_files)
    assert not [p for p in artifact_files if postgres.PASSWORD.encode() in p.read_bytes()]
    printed = again.stdout + again.stderr + "".join(output(tmp_path, n) for n in ["sweep", *[f"single{k}" for k in range(4)]])
    assert postgres.PASSWORD not in printed and '--backend-store-uri "$FEATSWEEP_TRACKING_URI"' in again.stdout
