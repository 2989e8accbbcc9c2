"""Slow tier: a sweep on a real single-node Slurm cluster (``hydra/launcher=submitit_slurm``: sbatch, sacct
through slurmdbd) into a real PostgreSQL store, with a shared cache folder. One job hits its Slurm time limit and
ends KILLED through SIGTERM; the sweep counts it and exits 1; the same command resumes it to 3 FINISHED jobs."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from servers import PostgresCluster, SlurmCluster, postgres_binaries, postgres_missing, slurm_missing

pytestmark = pytest.mark.slow

SEEDS = ["1", "2", "3"]
TIMED_OUT = "3"  # the job the test holds (SIGSTOP) until Slurm's time limit ends it
TIME_LIMIT_MIN = 2


@pytest.fixture(scope="module")
def servers():
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("Hydra's submitit launcher is missing: pip install 'featsweep[slurm]'")
    postgres = PostgresCluster(postgres_binaries())
    try:
        slurm = SlurmCluster()
    except BaseException:
        postgres.stop()
        raise
    print(f"Slurm cluster running from {slurm.dir} (node {slurm.node}); PostgreSQL on port {postgres.port}")
    yield slurm, postgres
    slurm.stop()
    postgres.stop()


def test_a_slurm_sweep_into_postgres_survives_a_time_limit_and_resumes(servers, tmp_path):
    slurm, postgres = servers
    uri = postgres.create_database("slurm")
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", FEATSWEEP_TRACKING_URI=uri, **slurm.env)
    cache = tmp_path / "shared-cache"
    command = [sys.executable, "-m", "featsweep", "-m", "hydra/launcher=submitit_slurm",
               f"hydra.launcher.timeout_min={TIME_LIMIT_MIN}", "hydra.launcher.signal_delay_s=30",
               "tracking=postgres", f"cache.dir={cache}", "stages=[task,attribution,network]", f"seed={','.join(SEEDS)}"]
    client = MlflowClient(uri)

    def runs(status: str | None = None):
        experiment = client.get_experiment_by_name("featsweep")
        if experiment is None:
            return []
        found = client.search_runs([experiment.experiment_id], f"attributes.status = '{status}'" if status else "")
        return [r for r in found if "mlflow.parentRunId" in r.data.tags]

    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=open(tmp_path / "first.out", "w"),
                             stderr=open(tmp_path / "first.err", "w"))
    held = pid = None
    warned = False
    deadline = time.monotonic() + 600
    while first.poll() is None and time.monotonic() < deadline:
        if held is None:
            job = next((r for r in runs("RUNNING") if r.data.params.get("seed") == TIMED_OUT and "featsweep.pid" in r.data.tags), None)
            if job is not None:  # hold it so that it cannot finish before its time limit
                held, pid = job.info.run_id, int(job.data.tags["featsweep.pid"])
                os.kill(pid, signal.SIGSTOP)
        elif not warned and any("Slurm sent SIGUSR2" in f.read_text() for f in tmp_path.glob("multirun/*/*/.submitit/*/*.err")):
            warned = True  # Slurm continued the job to deliver its warning (signal_delay_s before the limit): hold again
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)
    if first.poll() is None:
        first.kill()
        pytest.fail("the first sweep did not end in 10 minutes")
    log = (tmp_path / "first.out").read_text() + (tmp_path / "first.err").read_text()
    assert held is not None, "the held job's run was never seen RUNNING\n" + log[-3000:]
    assert warned, "featsweep did not log Slurm's warning signal (SIGUSR2)"
    # Slurm ended the held job at its time limit (SIGCONT, then SIGTERM): KILLED; the other two FINISHED
    assert first.returncode == 1, log[-3000:]
    assert "3 jobs: 2 finished, 1 failed" in log, log[-3000:]
    killed = client.get_run(held)
    assert killed.info.status == "KILLED" and killed.data.tags["featsweep.signal"] == "SIGTERM"
    assert "TIMEOUT" in slurm.job_states().values()
    assert sorted(r.data.params["seed"] for r in runs("FINISHED")) == ["1", "2"]

    # the same command resumes the sweep: the two finished jobs are reused, the killed one runs again
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "3 jobs: 1 finished, 0 failed, 2 reused" in second.stderr
    finished = runs("FINISHED")
    assert sorted(r.data.params["seed"] for r in finished) == SEEDS  # each job FINISHED once
    assert not runs("RUNNING")
    parents = {r.data.tags["mlflow.parentRunId"] for r in finished}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.status == "FINISHED" and parent.data.tags["featsweep.resumed"] == "1"
    summary = client.download_artifacts(parent.info.run_id, "compare/summary.csv", str(tmp_path))
    assert len(pd.read_csv(summary)) == len(SEEDS)
    # every job ran through sbatch on the cluster, and wrote to the shared cache
    states = slurm.job_states()
    assert list(states.values()).count("COMPLETED") >= len(SEEDS), states
    assert any(cache.rglob("*")), "nothing in the shared cache folder"
