"""Sweeps that survive faults: concurrent first use of a store, honest exit codes, signals, hard kills,
resume, a store that goes away, bad inputs. Real SQLite stores, real subprocesses, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from featsweep.config import TaskConfig, checked, to_container
from featsweep.errors import FeatsweepError
from featsweep.tracking.liveness import REASON_TAG, close_dead_runs, death_reason, owner_tags
from featsweep.rerun import compare_metrics, relative_difference
from featsweep.results import StageResult
from featsweep.sweep import sweep_key
from featsweep.stages.task import read_task_rows
from featsweep.tracking.run import JobRun
from featsweep.tracking.upload import upload
from helpers import QUICK, artifacts, compose_with, mlflow_runs, run_featsweep
from servers import free_port

TINY = [*QUICK, "task.limit=5"]
FAST = ["clustering.n_null=5", "clustering.n_bootstrap=3", "clustering.n_continuum=3", "steering.samples_per_size=4"]


def start(cwd: Path, *args: str, name: str = "proc") -> subprocess.Popen:
    """`python -m featsweep ARGS` in the background, in its own process group, output to files in cwd."""
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, "-m", "featsweep", *args], cwd=cwd, env=env, start_new_session=True,
                            stdout=open(cwd / f"{name}.out", "w"), stderr=open(cwd / f"{name}.err", "w"))


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def job_log_says(folder: Path, text: str) -> bool:
    return any(text in p.read_text(errors="replace") for p in folder.glob("**/featsweep.log"))


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def one_clean_error(proc, fragment: str) -> None:
    """Exit 1, the message once on stderr as `featsweep: error: ...`, and no traceback anywhere."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "featsweep: error: " in proc.stderr and fragment in proc.stderr
    assert (proc.stdout + proc.stderr).count(fragment) == 1


# ---- liveness: how a run proves it is alive -----------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_death_reason_follows_the_documented_rule():
    mine = owner_tags()
    assert death_reason(mine) is None  # this process, fresh heartbeat
    assert "no longer exists" in death_reason({**mine, "featsweep.pid": str(dead_pid())})
    assert "pid now belongs" in death_reason({**mine, "featsweep.pid_start": "1"})
    elsewhere = {**mine, "featsweep.host": "another-node"}
    assert death_reason(elsewhere) is None
    assert "no heartbeat" in death_reason({**elsewhere, "featsweep.heartbeat": str(int(time.time()) - 3600)})
    assert death_reason({}) is None  # runs that featsweep does not own are never touched


def test_dead_runs_are_closed_and_live_ones_kept(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("x")
    dead = client.create_run(experiment, tags={**owner_tags(), "featsweep.pid": str(dead_pid())}).info.run_id
    alive = client.create_run(experiment, tags=owner_tags()).info.run_id
    foreign = client.create_run(experiment).info.run_id
    assert close_dead_runs(client, experiment) == [dead]
    assert client.get_run(dead).info.status == "FAILED" and "no longer exists" in client.get_run(dead).data.tags[REASON_TAG]
    assert client.get_run(alive).info.status == "RUNNING" and client.get_run(foreign).info.status == "RUNNING"


# ---- exit codes that tell the truth ----------------------------------------------------------------------------


def test_multirun_against_an_unreachable_store_exits_nonzero_with_one_line(tmp_path):
    proc = run_featsweep(tmp_path, "-m", "tracking=server", f"tracking.uri=http://127.0.0.1:{free_port()}",
                         *TINY, "steering.factor=1,5")
    one_clean_error(proc, "cannot be reached")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_job_that_fails_before_its_run_exists_fails_the_sweep_and_is_counted(tmp_path):
    proc = run_featsweep(tmp_path, "-m", *QUICK, "task.limit=5,${nope}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 jobs: 1 finished, 1 failed, 0 reused" in last_line(proc.stderr)
    assert "cannot be resolved" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    runs = mlflow_runs(tmp_path)
    assert runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]["status"] == "FAILED"
    assert (runs["status"] != "RUNNING").all()


# ---- resume keeps a sweep whole ------------------------------------------------------------------------------


def test_sweep_key_ignores_order_and_where_results_go():
    assert sweep_key(["b=1", "a=3,2"], "e") == sweep_key(["a=2,3", "b=1", "tracking.uri=x", "cache.dir=y"], "e")
    assert sweep_key(["a=2,3"], "e") != sweep_key(["a=2,3,4"], "e") != sweep_key(["a=2,3,4"], "f")


@pytest.mark.slow  # 20-40 s of featsweep processes: slow tier (CI runs it), to keep the default tier near 10 min
def test_a_sweep_attaches_a_single_run_of_its_points_and_reruns_into_the_same_parent(tmp_path):
    single = run_featsweep(tmp_path, *QUICK, "task.limit=5")
    assert single.returncode == 0, single.stderr[-3000:]
    first = run_featsweep(tmp_path, "-m", *QUICK, "task.limit=5,6")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 jobs: 1 finished, 0 failed, 1 reused" in last_line(first.stderr)
    again = run_featsweep(tmp_path, "-m", *QUICK, "task.limit=6,5")  # the same sweep, finished: nothing to do
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 jobs: 0 finished, 0 failed, 2 reused" in last_line(again.stderr)
    runs = mlflow_runs(tmp_path)
    parents = runs[runs["tags.featsweep.role"] == "sweep"]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"  # no new, empty parent
    parent = parents.iloc[0]["run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert sorted(children["params.task.limit"]) == ["5", "6"] and len(runs) == 3  # the single run was adopted
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    summary = pd.read_csv(client.download_artifacts(parent, "compare/summary.csv", str(tmp_path)))
    assert sorted(summary["task.limit"]) == [5, 6]


@pytest.mark.slow  # 20-40 s of featsweep processes: slow tier (CI runs it), to keep the default tier near 10 min
def test_a_second_copy_of_a_running_sweep_stops_with_one_line_naming_it(tmp_path):
    sweep = ["-m", *QUICK, "task.limit=5,6,7"]
    first = start(tmp_path, *sweep, name="first")
    try:
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

        def parent_running() -> bool:
            if not (tmp_path / "mlflow.db").exists() or not (tmp_path / "multirun").exists():
                return False
            return any(r.data.tags.get("featsweep.role") == "sweep" and r.info.status == "RUNNING"
                       for r in client.search_runs([client.get_experiment_by_name("featsweep").experiment_id]))

        assert wait_for(parent_running, 240, first), (tmp_path / "first.err").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGSTOP)  # hold the first copy mid-sweep (alive, heartbeat recent)
        try:
            second = run_featsweep(tmp_path, "-m", "task.limit=7,6,5", *QUICK)  # the same sweep, written differently
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        parent = next(r for r in client.search_runs(["1"]) if r.data.tags.get("featsweep.role") == "sweep")
        one_clean_error(second, f"this sweep is already running: parent run {parent.info.run_id}")
        assert f"process {first.pid}" in second.stderr
        assert first.wait(timeout=600) == 0, (tmp_path / "first.err").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    runs = mlflow_runs(tmp_path)
    jobs = runs[runs["tags.featsweep.role"] != "sweep"]
    assert len(runs[runs["tags.featsweep.role"] == "sweep"]) == 1 and len(jobs) == 3  # no job ran twice
    assert set(runs["status"]) == {"FINISHED"}


# ---- bad inputs: one line naming the fix ---------------------------------------------------------------------


def test_bad_task_files_are_one_clear_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("name,answer\nJos\xe9 Ram\xedrez,baseball\n".encode("latin-1"))
    with pytest.raises(FeatsweepError, match="is empty"):
        read_task_rows(TaskConfig(path=str(empty), subject_column="name"))
    with pytest.raises(FeatsweepError, match="not UTF-8.*offset 15, line 2"):
        read_task_rows(TaskConfig(path=str(latin), subject_column="name"))


@pytest.mark.parametrize("content, fragment", [(b"", "is empty (0 bytes)"),
                                               ("name,answer\nJos\xe9,baseball\n".encode("latin-1"), "is not UTF-8 text")])
def test_bad_task_file_in_a_run(tmp_path, content, fragment):
    (tmp_path / "task.csv").write_bytes(content)
    proc = run_featsweep(tmp_path, *QUICK, f"task.path={tmp_path}/task.csv", "task.subject_column=name")
    one_clean_error(proc, fragment)


def test_read_only_working_directory_is_one_clear_error():
    proc = run_featsweep("/proc", *TINY)  # not writable even for root
    one_clean_error(proc, "is not writable")


def test_a_store_that_is_not_a_database_is_one_clear_error(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"this is not an sqlite database\n" * 100)
    proc = run_featsweep(tmp_path, *TINY)
    one_clean_error(proc, "cannot be opened")


def test_an_http_server_that_is_not_mlflow_is_one_clear_error(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30)
        proc = run_featsweep(tmp_path, *TINY, "tracking=server", f"tracking.uri=http://127.0.0.1:{port}")
    finally:
        server.kill()
    one_clean_error(proc, "is not an MLflow tracking server")


def test_few_prompts_and_half_precision_on_cpu_warn_once(tmp_path):
    proc = run_featsweep(tmp_path, *TINY, "dtype=float16", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count("Only 5 prompts") == 1 and output.count("dtype=float16 on CPU") == 1


# ---- a store that goes away: the job folder keeps everything, upload logs it later ----------------------------


def test_upload_logs_a_job_folder_into_a_store(tmp_path):
    cfg = compose_with([f"tracking.uri=sqlite:///{tmp_path}/a.db", f"tracking.artifact_root={tmp_path}/mlruns"])
    with JobRun(checked(cfg), to_container(cfg), tmp_path / "job") as job:
        job.log_result(StageResult(metrics={"x.y": 2.5}, tags={"x.tag": "v"}, files={"network/g.graphml": b"<g/>"}))
    journal = json.loads((tmp_path / "job" / "featsweep_run.json").read_text())
    assert journal["status"] == "FINISHED" and journal["metrics"] == {"x.y": 2.5}
    other = f"sqlite:///{tmp_path}/b.db"
    run_id = upload(tmp_path / "job", other)
    client = MlflowClient(other)
    run = client.get_run(run_id)
    assert run_id != job.run_id and run.info.status == "FINISHED"
    assert run.data.metrics == {"x.y": 2.5} and run.data.tags["x.tag"] == "v" and run.data.params["steering.factor"] == str(float(cfg.steering.factor))
    assert {"network/g.graphml", "config/config.yaml"} <= artifacts(client, run_id)


# ---- reruns: a stated tolerance ------------------------------------------------------------------------------


def test_rerun_comparison_uses_a_stated_tolerance():
    original = {"a": 1.0, "b": 2.0, "c": float("nan")}
    assert relative_difference(1.0, 1.0 + 1.3e-6) == pytest.approx(1.3e-6, rel=1e-3)
    same, differ = compare_metrics(original, {"a": 1.0 + 1.3e-6, "b": 2.0, "c": float("nan")})
    assert same == ["a", "b", "c"] and differ == []
    same, differ = compare_metrics(original, {"a": 1.0 + 1.3e-6, "b": 2.0, "c": float("nan")}, rtol=0)
    assert differ == [("a", 1.0, 1.0 + 1.3e-6)]
    assert compare_metrics(original, {"a": 1.001, "b": 2.0})[1][0][0] == "a"


# ---- slow tier: concurrency, signals, hard kills, a real server dying ----------------------------------------


@pytest.mark.slow
def test_four_processes_on_a_fresh_store_all_finish(tmp_path):
    procs = [start(tmp_path, *TINY, f"seed={n}", name=f"seed{n}") for n in range(4)]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0, 0, 0], [(tmp_path / f"seed{n}.err").read_text()[-1500:] for n in range(4)]
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 4 and (runs["status"] == "FINISHED").all()


@pytest.mark.slow
def test_sigterm_closes_the_job_and_the_parent_and_exits_nonzero(tmp_path):
    proc = start(tmp_path, "-m", "task.limit=20,21", *FAST)
    assert wait_for(lambda: job_log_says(tmp_path / "multirun", "MLflow run"), 300, proc), "the job never started"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert "Traceback" not in (tmp_path / "proc.err").read_text()
    runs = mlflow_runs(tmp_path)
    assert (runs["status"] != "RUNNING").all()
    job = runs[runs["tags.mlflow.parentRunId"].notna()].iloc[0]
    parent = runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]
    assert job["status"] == "KILLED" and job["tags.featsweep.signal"] == "SIGTERM"
    assert parent["status"] == "KILLED" and parent["tags.featsweep.signal"] == "SIGTERM"


@pytest.mark.slow
def test_kill_9_then_the_same_sweep_gives_one_whole_parent(tmp_path):
    sweep = ["-m", "task.limit=20,21,22", *FAST]
    proc = start(tmp_path, *sweep)
    jobs = tmp_path / "multirun"
    # kill once the first job is done and the second job's run is open
    started = wait_for(lambda: bool(list(jobs.glob("*/*/.featsweep_jobs/0.json")))
                       and any("MLflow run" in p.read_text(errors="replace") for p in jobs.glob("*/*/1/featsweep.log")), 600, proc)
    assert started, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (mlflow_runs(tmp_path)["status"] == "RUNNING").sum() == 2  # the parent and the killed job

    again = run_featsweep(tmp_path, *sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 jobs: 2 finished, 0 failed, 1 reused" in last_line(again.stderr)
    runs = mlflow_runs(tmp_path)
    assert (runs["status"] != "RUNNING").all()
    parents = runs[runs["tags.featsweep.role"] == "sweep"]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    children = runs[runs["tags.mlflow.parentRunId"] == parents.iloc[0]["run_id"]]
    done = children[children["status"] == "FINISHED"]
    assert sorted(done["params.task.limit"]) == ["20", "21", "22"]
    killed = children[children["status"] == "FAILED"]
    assert len(killed) == 1 and "no longer exists" in killed.iloc[0][f"tags.{REASON_TAG}"]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))
    import requests

    def healthy() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
        except requests.RequestException:
            return False

    assert wait_for(healthy, 120, server), "mlflow server did not start"
    return server


@pytest.mark.slow
def test_a_server_killed_mid_job_fails_the_job_fast_and_upload_recovers_it(tmp_path):
    port, store = free_port(), tmp_path / "server"
    store.mkdir()
    server = start_mlflow_server(store, port)
    uri = f"http://127.0.0.1:{port}"
    try:
        job = start(tmp_path, "task.limit=30", *FAST, "tracking=server", f"tracking.uri={uri}")
        assert wait_for(lambda: bool(list(tmp_path.glob("outputs/*/*/tables/task_baseline.parquet"))), 300, job), \
            "the job never logged its first stage"
        os.killpg(server.pid, signal.SIGKILL)  # the server dies in the middle of the job
        server.wait()
        killed_at = time.time()
        code = job.wait(timeout=120)
        elapsed = time.time() - killed_at
        err = (tmp_path / "proc.err").read_text()
        print(f"the job exited {elapsed:.1f} s after the server was killed")
        assert code == 1 and elapsed < 60, (code, elapsed, err[-2000:])
        assert err.count("featsweep: error: Lost the MLflow tracking store") == 1 and "Traceback" not in err
        folder = Path(err.split("log it with: python -m featsweep.tracking.upload ")[1].split()[0])
        journal = json.loads((folder / "featsweep_run.json").read_text())
        assert journal["logged"] is False and journal["status"] == "FAILED" and journal["metrics"]["task.n_prompts"] == 30
        assert (folder / "config" / "config.yaml").exists() and (folder / "tables" / "task_baseline.parquet").exists()

        server = start_mlflow_server(store, port)  # the server comes back: log what the job kept
        proc = run_featsweep(tmp_path, str(folder), module="featsweep.tracking.upload")
        assert proc.returncode == 0, proc.stderr[-2000:]
        import mlflow

        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(experiment_names=["featsweep"])
        assert len(runs) == 1 and runs.iloc[0]["status"] == "FAILED" and runs.iloc[0]["run_id"] == journal["run_id"]
        assert runs.iloc[0]["metrics.task.n_prompts"] == 30 and "Lost the MLflow" in runs.iloc[0]["tags.featsweep.error"]
        assert "tables/task_baseline.parquet" in artifacts(MlflowClient(uri), journal["run_id"])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
