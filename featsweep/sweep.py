"""The Hydra callback that manages a sweep's parent run in MLflow, and the sweep's honest exit status.

* **One store, created once.** ``on_multirun_start`` opens the store and the experiment under the store
  lock before any job starts. If that fails (no server, a corrupt database) the sweep stops at once with
  one line and exit status 1: no job runs against a store that cannot record it.
* **One parent per sweep, across resumes.** A sweep is identified by its overrides (sorted, without
  ``tracking.*``/``cache.*``, which say where results go), hashed into the tag ``featsweep.sweep_key``;
  not by its date or folder. Running the same sweep again continues the newest parent with that key
  (reopened RUNNING, ``featsweep.resumed`` counts how often); only ``tracking.skip_finished=false``,
  which recomputes every job, opens a new one. Jobs whose config already FINISHED are attached to the
  parent (``featsweep.tracking.run.attach_to_sweep``), so the parent lists every job and the summary has
  one row per job.
* **Every job accounted for.** Each job writes its outcome (finished, reused, failed) to
  ``<sweep dir>/.featsweep_jobs/<num>.json`` from task code, including failures before a run existed
  (a bad value, an interpolation error, an unreachable store). A job folder without an outcome died
  without a word. ``on_multirun_end`` counts them, closes the parent and exits 1 if any job failed;
  its last line says how many jobs finished, failed and were reused.
* **One copy at a time.** A second copy of a sweep whose parent is RUNNING with a live owner stops before any
  job with one line naming the parent, its process and folder (checked and the parent opened under the store lock,
  so two copies started at once cannot both open it).
* **No parent left RUNNING.** The parent carries the liveness tags (``featsweep.tracking.liveness``) and an
  ``atexit`` hook closes it if the sweep process ends early (SIGTERM: KILLED; anything else: FAILED).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from featsweep.tracking import naming, signals
from featsweep.reports.compare import summarize_sweep
from featsweep.errors import FeatsweepError
from featsweep.tracking.liveness import HOST_TAG, PID_TAG, REASON_TAG, Heartbeat, death_reason, owner_tags
from featsweep.tracking.store import client_for, ensure_experiment, mask, server_alive, store_lock
from featsweep.reports.sweep_report import sweep_finished_message
from featsweep.tracking.run import PARENT_ENV, PARENT_FILE

log = logging.getLogger(__name__)

JOBS_DIR = ".featsweep_jobs"  # one outcome file per job: {"status": finished|reused|failed, ...}
KEY_TAG = "featsweep.sweep_key"
WHERE_NOT_WHAT = ("tracking.", "cache.", "+tracking.", "+cache.", "++tracking.", "++cache.")


def _canonical(override: str) -> str:
    """An override with the values of a simple sweep in sorted order (`a=6,5` -> `a=5,6`): the same jobs."""
    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
        if parsed.is_discrete_sweep():
            return f"{parsed.get_key_element()}=" + ",".join(sorted(parsed.sweep_string_iterator()))
    except Exception:  # anything unusual is kept as written
        pass
    return override


def sweep_key(overrides: list[str], experiment: str) -> str:
    """The identity of a sweep: its overrides (their order, the order of a sweep's values and the output
    locations aside) and its experiment."""
    kept = sorted(_canonical(o) for o in overrides if not o.startswith(WHERE_NOT_WHAT))
    return hashlib.sha256(json.dumps([experiment, kept]).encode()).hexdigest()[:16]


def record_job_outcome(sweep_dir: str | Path, job_num: int, status: str, run_id: Optional[str] = None,
                       message: str = "") -> None:
    """Remember how a job ended, so the end of the sweep can count it (written by the job itself)."""
    folder = Path(sweep_dir) / JOBS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{job_num}.json").write_text(json.dumps({"job": job_num, "status": status, "run_id": run_id,
                                                        "message": message}))


def record_failed_job(sweep_dir: str, job_num: int, message: str) -> None:
    """Remember a job that failed before it had a run (a bad config value, an unreachable store)."""
    record_job_outcome(sweep_dir, job_num, "failed", None, message)


def job_outcomes(sweep_dir: Path) -> list[dict]:
    """Every job's outcome; a job folder (one with .hydra/) that wrote none counts as failed."""
    outcomes = {}
    for path in sorted((sweep_dir / JOBS_DIR).glob("*.json")):
        record = json.loads(path.read_text())
        outcomes[record["job"]] = record
    started = len(list(sweep_dir.glob("**/.hydra")))
    for missing in range(max(0, started - len(outcomes))):
        outcomes[f"?{missing}"] = {"job": "?", "status": "failed", "run_id": None,
                                   "message": "the job ended without reporting (killed, or crashed hard)"}
    return list(outcomes.values())


def running_copy(client, experiment_id: str, key: str) -> Optional[str]:
    """A description of a live sweep with this key (its parent RUNNING, its owner alive), or None."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}' and tags.`featsweep.role` = 'sweep' "
                              "and attributes.status = 'RUNNING'", max_results=50)
    for run in runs:
        if death_reason(run.data.tags) is None:
            tags = run.data.tags
            return (f"parent run {run.info.run_id} ('{run.info.run_name}'), process {tags.get(PID_TAG)} on "
                    f"{tags.get(HOST_TAG)}, folder {tags.get('featsweep.sweep_dir')}")
    return None


def find_parent(client, experiment_id: str, key: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}' and tags.`featsweep.role` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


class _OpenParent:
    """The parent run this process holds open; closed at exit if the sweep did not end normally."""

    uri: Optional[str] = None
    run_id: Optional[str] = None
    heartbeat: Optional[Heartbeat] = None

    @classmethod
    def close_at_exit(cls) -> None:
        if cls.run_id is None:
            return
        if cls.heartbeat:
            cls.heartbeat.stop()
        exc = getattr(sys, "last_value", None)
        status, reason = "FAILED", "the sweep process ended before the sweep did"
        interrupted = ("KILLED", signals.received) if signals.received else signals.interruption(exc)
        try:
            client = client_for(cls.uri)
            if interrupted:
                status, name = interrupted
                reason = f"the sweep was interrupted by {name}"
                client.set_tag(cls.run_id, signals.SIGNAL_TAG, name)
            client.set_tag(cls.run_id, REASON_TAG, reason)
            client.set_terminated(cls.run_id, status)
        except Exception as err:  # the next featsweep command closes it (featsweep.tracking.liveness)
            print(f"featsweep: could not close the sweep's parent run {cls.run_id}: {err}", file=sys.stderr)
        cls.run_id = None


atexit.register(_OpenParent.close_at_exit)


class SweepCallback(Callback):
    """Opens (or continues) the sweep's parent run before any job starts and accounts for every job at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra only warns when a callback raises, and would run every job against a store that cannot record
        # it: stop the sweep here instead, with one line.
        try:
            self._open_parent(config)
        except FeatsweepError as err:
            print(f"featsweep: error: {err}", file=sys.stderr)
            sys.exit(1)
        except Exception as err:
            print(f"featsweep: error: the sweep's parent run could not be opened: {type(err).__name__}: {err}", file=sys.stderr)
            sys.exit(1)

    def _open_parent(self, config: DictConfig) -> None:
        tracking = config.tracking
        client, experiment_id = ensure_experiment(tracking.uri, tracking.experiment, tracking.artifact_root)
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        overrides = [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
        key = sweep_key(overrides, tracking.experiment)
        with store_lock(tracking.uri):  # two copies started at once: the second one sees the first one's parent
            self._open_or_continue(client, experiment_id, key, config, overrides, sweep_dir)

    def _open_or_continue(self, client, experiment_id: str, key: str, config: DictConfig, overrides: list[str],
                          sweep_dir: Path) -> None:
        tracking = config.tracking
        running = running_copy(client, experiment_id, key)
        if running:  # its jobs would run twice, and two processes would close one parent
            raise FeatsweepError(f"this sweep is already running: {running}. Wait for it to end, then run the same "
                                 "command again (it resumes the sweep and runs only what did not finish).")
        previous = find_parent(client, experiment_id, key) if tracking.skip_finished else None
        if previous is not None:
            run_id = previous.info.run_id
            client.update_run(run_id, status="RUNNING")
            resumed = int(previous.data.tags.get("featsweep.resumed", "0")) + 1
            tags = {"featsweep.resumed": str(resumed), "featsweep.sweep_dir": str(sweep_dir), **owner_tags()}
            for name, value in tags.items():
                client.set_tag(run_id, name, value)
            log.info("Continuing the sweep's parent run %s (same overrides; resumed %d time(s)).", run_id, resumed)
        else:
            run = client.create_run(
                experiment_id,
                run_name=tracking.run_name or naming.parent_run_name(overrides, sweep_dir),
                tags={"featsweep.role": "sweep", "featsweep.sweep_dir": str(sweep_dir), KEY_TAG: key,
                      "featsweep.sweep_overrides": mask(" ".join(overrides)), **owner_tags(),
                      **{k: mask(v) for k, v in naming.description("sweep", config).items()}},
            )
            run_id = run.info.run_id
            log.info("Sweep parent run %s", run_id)
        naming.remember_sweep(sweep_dir, overrides)
        (sweep_dir / PARENT_FILE).write_text(run_id)
        os.environ[PARENT_ENV] = run_id
        _OpenParent.uri, _OpenParent.run_id = tracking.uri, run_id
        _OpenParent.heartbeat = Heartbeat(client, run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.pop(PARENT_ENV, None)
        if not parent:
            return
        if _OpenParent.heartbeat:
            _OpenParent.heartbeat.stop()
        outcomes = job_outcomes(Path(str(config.hydra.sweep.dir)))
        counts = {status: sum(o["status"] == status for o in outcomes) for status in ("finished", "failed", "reused")}
        failures = [f"job {o['job']} ({o['message'] or o['run_id']})" for o in outcomes if o["status"] == "failed"]
        uri = config.tracking.uri
        line = (f"featsweep: sweep {parent}: {len(outcomes)} jobs: {counts['finished']} finished, "
                f"{counts['failed']} failed, {counts['reused']} reused.")
        if not server_alive(uri):  # every call would time out: report from the job outcomes alone
            _OpenParent.run_id = None
            print(f"featsweep: the tracking store {mask(uri)} stopped answering; the parent run {parent} stays open until "
                  f"the next featsweep command closes it.\n{line}", file=sys.stderr)
            sys.exit(1)
        client = client_for(uri)
        for status, n in counts.items():
            client.set_tag(parent, f"featsweep.n_jobs_{status}", str(n))
        client.set_tag(parent, "featsweep.n_jobs", str(len(outcomes)))
        try:
            summarize_sweep(client, parent)
            if "featsweep.compare_error" in client.get_run(parent).data.tags:  # a resumed sweep's earlier failure
                client.delete_tag(parent, "featsweep.compare_error")
        except Exception as err:  # the summary must never lose the sweep's own status
            log.warning("Cross-run summary failed: %s", err)
            client.set_tag(parent, "featsweep.compare_error", str(err)[:5000])
        client.set_terminated(parent, "FAILED" if failures else "FINISHED")
        _OpenParent.run_id = None
        print(sweep_finished_message(client, parent, config.tracking.uri), flush=True)
        if failures:
            print(f"featsweep: {len(failures)} of {len(outcomes)} jobs failed: {', '.join(failures)}. "
                  "See each run's 'featsweep.error' tag and error.txt artifact.", file=sys.stderr)
        print(line, file=sys.stderr, flush=True)
        if failures:
            sys.exit(1)
