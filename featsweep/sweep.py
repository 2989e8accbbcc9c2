"""The Hydra callback that manages a sweep's parent run in MLflow.

It creates the store and experiment once, before any job starts (parallel jobs creating a fresh SQLite
store at the same time corrupt it), opens the parent run whose children are the jobs, and at the end of
the multirun summarises the sweep (``featsweep.compare``) and closes the parent. Job runs themselves
belong to ``featsweep.tracking.JobRun``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from featsweep import naming
from featsweep.compare import summarize_sweep
from featsweep.sweep_report import sweep_finished_message
from featsweep.tracking import PARENT_ENV, PARENT_FILE, client_for, ensure_experiment

log = logging.getLogger(__name__)


FAILED_DIR = ".featsweep_failed"  # one file per job that failed before its run existed (a bad config value)


def record_failed_job(sweep_dir: str, job_num: int, message: str) -> None:
    """Remember a job that failed before it had a run, so the end of the sweep counts it."""
    folder = Path(sweep_dir) / FAILED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{job_num}.txt").write_text(message)


def failed_before_a_run(config: DictConfig) -> list[Path]:
    return sorted((Path(str(config.hydra.sweep.dir)) / FAILED_DIR).glob("*.txt"))


class SweepCallback(Callback):
    """Creates the store and experiment once before any job starts and opens the sweep's parent run."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = config.tracking
        experiment_id = ensure_experiment(tracking.uri, tracking.experiment, tracking.artifact_root)
        client = client_for(tracking.uri)
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        overrides = list(config.hydra.overrides.task)
        run = client.create_run(
            experiment_id,
            run_name=tracking.run_name or naming.parent_run_name(overrides, sweep_dir),
            tags={"featsweep.role": "sweep", "featsweep.sweep_dir": str(sweep_dir), "featsweep.sweep_overrides": " ".join(overrides),
                  **naming.description("sweep", config)},
        )
        naming.remember_sweep(sweep_dir, overrides)
        (sweep_dir / PARENT_FILE).write_text(run.info.run_id)
        os.environ[PARENT_ENV] = run.info.run_id
        log.info("Sweep parent run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.pop(PARENT_ENV, None)
        if not parent:
            return
        client = client_for(config.tracking.uri)
        children = client.search_runs(
            [client.get_run(parent).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=10000
        )
        failed = [run.info.run_id for run in children if run.info.status != "FINISHED"]
        failed += [f"job {path.stem} ({path.read_text().strip()})" for path in failed_before_a_run(config)]
        client.set_tag(parent, "featsweep.n_jobs_logged", str(len(children)))
        client.set_tag(parent, "featsweep.n_jobs_failed", str(len(failed)))
        try:
            summarize_sweep(client, parent)
        except Exception as err:  # the summary must never lose the sweep's own status
            log.warning("Cross-run summary failed: %s", err)
            client.set_tag(parent, "featsweep.compare_error", str(err)[:5000])
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")
        print(sweep_finished_message(client, parent, config.tracking.uri), flush=True)
        if failed:
            total = len(children) + len(failed_before_a_run(config))
            print(f"featsweep: {len(failed)} of {total} jobs failed: {', '.join(failed)}. "
                  "See each run's 'featsweep.error' tag and error.txt artifact.", file=sys.stderr)
            sys.exit(1)
