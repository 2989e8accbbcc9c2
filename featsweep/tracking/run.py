"""MLflow: one run per job, its params/metrics/artifacts, resume, and a parent run per sweep.

The job's run is owned by task code (``JobRun``), not by the Hydra callback, because rerunning a
job from its saved config drops ``hydra.callbacks``. The sweep's parent run belongs to
``featsweep.sweep.SweepCallback``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import matplotlib.pyplot as plt
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.entities import Metric, Param
from omegaconf import OmegaConf
from threadpoolctl import threadpool_info

from featsweep.tracking import naming, signals
from featsweep.errors import FeatsweepError
from featsweep.tracking.liveness import Heartbeat, owner_tags
from featsweep.results import StageResult
from featsweep.tracking.store import client_for, ensure_experiment, is_http, mask, server_alive  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

PARENT_ENV = "FEATSWEEP_PARENT_RUN_ID"
PARENT_FILE = ".featsweep_parent_run_id"
HASH_TAG = "featsweep.config_hash"
# Config keys that say where results go, not what is computed: left out of the config hash.
UNHASHED_KEYS = ("tracking", "cache")


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys for nested dicts/lists: {"a": {"b": 1}} -> {"a.b": "1"}."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(node) if isinstance(node, list) else str(node)}


def config_hash(resolved: dict) -> str:
    """Hash of what a job computes: the resolved config without tracking and output paths."""
    kept = {k: v for k, v in resolved.items() if k not in UNHASHED_KEYS and k != "hydra"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def hydra_output_dir() -> Optional[Path]:

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return None


def hydra_overrides() -> list[str]:

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def is_multirun() -> bool:

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def find_parent_run_id() -> Optional[str]:
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]

    if is_multirun():
        marker = Path(HydraConfig.get().sweep.dir) / PARENT_FILE
        if marker.exists():
            return marker.read_text().strip()
    return None


JOURNAL = "featsweep_run.json"  # what a job logged, or meant to: lets featsweep.tracking.upload log it later
VERSIONED = ("featsweep", "torch", "numpy", "mlflow", "transformer-lens", "sae-lens", "hydra-core")


class StoreLost(FeatsweepError):
    """The tracking store stopped answering during a job."""


def environment_tags() -> dict[str, str]:
    """What a rerun must match for the numbers to be identical: thread count and library versions."""
    import importlib.metadata as metadata
    import platform

    import torch

    tags = {"featsweep.torch_threads": str(torch.get_num_threads()), "featsweep.version.python": platform.python_version()}
    blas = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    if blas:  # numpy/scipy's BLAS (statistics in float64); joblib workers limit it too
        tags["featsweep.blas_threads"] = str(max(blas))
    for package in VERSIONED:
        try:
            tags[f"featsweep.version.{package.replace('-', '_')}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return tags


def finished_run_with_hash(client, experiment_id: str, digest: str, parent: Optional[str] = None):
    """A FINISHED run with this config hash: one of ``parent``'s children first, else any."""
    query = f"tags.`{HASH_TAG}` = '{digest}' and attributes.status = 'FINISHED'"
    if parent:
        runs = client.search_runs([experiment_id], filter_string=f"{query} and tags.`mlflow.parentRunId` = '{parent}'", max_results=1)
        if runs:
            return runs[0]
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def attach_to_sweep(client, parent: str, run) -> str:
    """Make a reused FINISHED run count as a job of the sweep ``parent``; returns the id that does.

    A run without a parent (a single run, e.g. `make run`) is adopted: it gets ``mlflow.parentRunId``.
    A run that belongs to another sweep stays there; the sweep gets a FINISHED *link run* instead, a
    copy of its params, metrics and tags with ``featsweep.reused_run`` naming the original (whose
    artifacts are not copied). Either way the parent lists the job and ``compare`` finds it."""
    current = run.data.tags.get("mlflow.parentRunId")
    if current == parent:
        return run.info.run_id
    if current is None:
        client.set_tag(run.info.run_id, "mlflow.parentRunId", parent)
        client.set_tag(run.info.run_id, "featsweep.adopted_by", parent)
        return run.info.run_id
    original = run.data.tags.get("featsweep.reused_run", run.info.run_id)
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith(("mlflow.", "featsweep.heartbeat", "featsweep.pid"))}
    tags.update({"mlflow.parentRunId": parent, "featsweep.reused_run": original, "mlflow.runName": f"reuse of {original[:8]}"})
    link = client.create_run(run.info.experiment_id, tags=tags)
    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in run.data.params.items()]
    metrics = [Metric(k, v, now, 0) for k, v in run.data.metrics.items()]
    for start in range(0, max(len(params), len(metrics)), 100):
        client.log_batch(link.info.run_id, params=params[start : start + 100], metrics=metrics[start : start + 100])
    client.set_terminated(link.info.run_id, "FINISHED")
    return link.info.run_id


def _short_reason(err: Exception) -> str:
    text = str(err)
    for needle, reason in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                           ("Max retries exceeded", "no answer after retries"), ("RemoteDisconnected", "connection dropped")):
        if needle in text:
            return reason
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first if len(first) <= 200 else first[:200] + "..."


class JobRun:
    """The MLflow run of one job. Use as a context manager: an exception ends the run FAILED (KILLED on
    SIGTERM), with the error as a tag and a traceback artifact; what was logged before stays. While
    open, a heartbeat thread proves the run alive (``featsweep.tracking.liveness``). Everything the job logs is
    also written under its output folder with a journal (``featsweep_run.json``), so if the store goes
    away mid-job the job stops at once and ``python -m featsweep.tracking.upload FOLDER`` logs it later."""

    def __init__(self, cfg: Any, resolved: dict, out_dir: Optional[Path] = None):
        self.cfg = cfg
        self.resolved = resolved
        self.out_dir = (out_dir or hydra_output_dir() or Path(tempfile.mkdtemp(prefix="featsweep-"))).resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.digest = config_hash(resolved)
        self.client = None
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self.parent: Optional[str] = None
        self.skipped_for: Optional[str] = None  # run id of the identical FINISHED run, when resuming
        self.reused_as: Optional[str] = None  # the run that lists it in this sweep (itself, or a link run)
        self.offline = False  # the store stopped answering: log nothing more, keep everything on disk
        self.heartbeat: Optional[Heartbeat] = None
        self._previous_handler = None
        self._handler_installed = False
        self._closing = False
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.artifacts: list[tuple[str, Optional[str]]] = []  # (local path, artifact folder)

    def __enter__(self) -> "JobRun":
        tracking = self.cfg.tracking
        self.client, experiment_id = ensure_experiment(tracking.uri, tracking.experiment, tracking.artifact_root)
        self.experiment_id = experiment_id
        self.parent = find_parent_run_id()
        if tracking.skip_finished:
            previous = finished_run_with_hash(self.client, experiment_id, self.digest, self.parent)
            if previous is not None:
                self.skipped_for = previous.info.run_id
                log.info("Skipping: identical config (hash %s) already FINISHED as run %s.", self.digest, self.skipped_for)
                if self.parent:
                    self.reused_as = attach_to_sweep(self.client, self.parent, previous)
                    self.client.set_tag(self.parent, f"featsweep.skipped.{self.digest}", self.skipped_for)
                return self
        tags = {HASH_TAG: self.digest, "featsweep.output_dir": str(self.out_dir), **owner_tags(), **environment_tags()}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
            tags["featsweep.git_commit"] = commit
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        self.tags.update(tags)
        tags.update(naming.description())
        tags = {k: mask(v) for k, v in tags.items()}
        run = self.client.create_run(experiment_id, run_name=naming.job_run_name(tracking.run_name), tags=tags)
        self.run_id = run.info.run_id
        self._watch_store()
        log.info("MLflow run %s (experiment '%s', %s)", self.run_id, tracking.experiment, mask(tracking.uri))
        try:
            self._log_config()
        except BaseException as err:  # __exit__ is not called for a failing __enter__: close the run here
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def _watch_store(self) -> None:
        """Heartbeat; if it finds the server gone, stop the job at once (SIGUSR1 to the main thread raises
        StoreLost there), so a long stage does not run on for minutes against a dead store."""
        try:
            self._previous_handler = signal.signal(signal.SIGUSR1, self._raise_lost)
            self._handler_installed = True
        except ValueError:  # not the main thread: the job's next store call reports the loss
            pass
        self.heartbeat = Heartbeat(self.client, self.run_id, on_failure=self._heartbeat_failed)

    def _heartbeat_failed(self) -> bool:
        uri = self.cfg.tracking.uri
        if not is_http(uri) or server_alive(uri, timeout=3):
            return False
        self.offline = True
        if self._handler_installed:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        return True

    def _raise_lost(self, signum, frame) -> None:
        if self.offline and self.run_id and not self._closing:
            raise self._lost("its heartbeat could not reach it")

    def _store(self, method: str, *args, **kwargs) -> None:
        """Call the MLflow client; a store that stopped answering becomes one StoreLost error, and the
        job logs nothing more (no retry storm, no chain of tracebacks)."""
        if self.offline:
            raise self._lost("it stopped answering earlier in this job")
        try:
            getattr(self.client, method)(*args, **kwargs)
        except Exception as err:
            uri = self.cfg.tracking.uri
            if is_http(uri) and not server_alive(uri, timeout=3):
                self.offline = True
                raise self._lost(_short_reason(err)) from None
            raise

    def _lost(self, why: str) -> StoreLost:
        return StoreLost(
            f"Lost the MLflow tracking store at {mask(self.cfg.tracking.uri)} during the job ({why}). What this job "
            f"computed is kept in {self.out_dir}; once the store is back, log it with: python -m featsweep.tracking.upload {self.out_dir}")

    def _log_config(self) -> None:

        params = [Param(k[:250], v[:6000]) for k, v in self.params().items()]
        for start in range(0, len(params), 100):
            self._store("log_batch", self.run_id, params=params[start : start + 100])
        config_dir = self.out_dir / "config"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "config.yaml").write_text(mask(OmegaConf.to_yaml(OmegaConf.create(self.resolved))))
        (config_dir / "overrides.yaml").write_text(mask(OmegaConf.to_yaml(OmegaConf.create(hydra_overrides()))))
        for name in ("config.yaml", "overrides.yaml"):
            self._artifact(config_dir / name, "config")

    def params(self) -> dict[str, str]:
        """The resolved config as params, with no password (``tracking.uri`` may hold one)."""
        return {k: mask(v) for k, v in flatten(self.resolved).items()}

    def tag(self, key: str, value: Any) -> None:
        if self.run_id:
            self.tags[key] = mask(str(value))[:5000]
            self._store("set_tag", self.run_id, key, self.tags[key])

    def log_result(self, result: StageResult) -> None:
        """Write a stage's tables and figures under the job's output dir, then log everything."""

        now = int(time.time() * 1000)
        values = {k: float(v) for k, v in result.metrics.items() if v is not None}
        infinite = sorted(k for k, v in values.items() if math.isinf(v))
        if infinite:  # MLflow would store +-inf as +-1.8e308, which reads as a number
            log.warning("Not logged (infinite): %s", ", ".join(infinite))
            values = {k: v for k, v in values.items() if not math.isinf(v)}
        self.metrics.update(values)
        metrics = [Metric(k, v, now, 0) for k, v in values.items()]
        for start in range(0, len(metrics), 500):
            self._store("log_batch", self.run_id, metrics=metrics[start : start + 500])
        for key, value in result.tags.items():
            self.tag(key, value)
        for artifact_path, table in result.tables.items():
            self._log_file(artifact_path, lambda p, t=table: t.to_parquet(p, index=False))
            self._log_file(str(Path(artifact_path).with_suffix(".csv")), lambda p, t=table: t.to_csv(p, index=False))  # the UI previews CSV
        for artifact_path, figure in result.figures.items():
            self._log_file(artifact_path, lambda p, f=figure: f.savefig(p, dpi=110, bbox_inches="tight"))

            plt.close(figure)
        for artifact_path, content in result.files.items():
            self._log_file(artifact_path, lambda p, c=content: p.write_bytes(c))

    def _log_file(self, artifact_path: str, write) -> None:
        local = self.out_dir / artifact_path
        local.parent.mkdir(parents=True, exist_ok=True)
        write(local)
        folder = str(Path(artifact_path).parent)
        self._artifact(local, None if folder == "." else folder)

    def _artifact(self, local: Path, folder: Optional[str]) -> None:
        self.artifacts.append((str(local), folder))
        self._store("log_artifact", self.run_id, str(local), folder)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.run_id is None:
            return False
        self._closing = True
        if self.heartbeat:
            self.heartbeat.stop()
        if self._handler_installed:
            signal.signal(signal.SIGUSR1, self._previous_handler or signal.SIG_DFL)
            self._handler_installed = False
        status, error = "FINISHED", None
        interrupted = signals.interruption(exc)
        if interrupted:
            status, signal_name = interrupted
            error = f"interrupted by {signal_name}"
            self.tags[signals.SIGNAL_TAG] = signal_name
        elif exc is not None:
            status = "FAILED"
            error = str(exc) if isinstance(exc, FeatsweepError) else f"{type(exc).__name__}: {exc}"
            (self.out_dir / "error.txt").write_text("".join(traceback.format_exception(exc_type, exc, tb)))
            self.artifacts.append((str(self.out_dir / "error.txt"), None))
        if error:
            self.tags["featsweep.error"] = error[:5000]
        log_file = self._job_log()
        if log_file:
            self.artifacts.append((log_file, "logs"))
        self._write_journal(status, error)
        if self.offline:
            return False
        try:
            try:
                for key in ("featsweep.error", signals.SIGNAL_TAG):
                    if key in self.tags:
                        self._store("set_tag", self.run_id, key, self.tags[key])
                for local, folder in self.artifacts:
                    if folder == "logs" or local.endswith("error.txt"):
                        self._store("log_artifact", self.run_id, local, folder)
            finally:
                if not self.offline:
                    self._store("set_terminated", self.run_id, status)
        except StoreLost:
            self._write_journal(status, error)  # now marked as not logged
            if exc is None:
                raise
        except Exception as err:
            if not interrupted:
                raise
            # the signal must still end the process; the journal on disk keeps the status for an upload
            log.warning("Could not close run %s after %s: %s", self.run_id, interrupted[1], err)
        return False

    def _write_journal(self, status: str, error: Optional[str]) -> None:
        tracking = self.cfg.tracking
        journal = {"run_id": self.run_id, "uri": tracking.uri, "experiment": tracking.experiment, "parent": self.parent,
                   "status": status, "error": error, "logged": not self.offline, "params": self.params(),
                   "tags": self.tags, "metrics": self.metrics, "artifacts": self.artifacts}
        (self.out_dir / JOURNAL).write_text(json.dumps(journal, indent=1))

    @staticmethod
    def _job_log() -> Optional[str]:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).exists():
                handler.flush()
                return handler.baseFilename
        return None
