"""MLflow: one run per job, its params/metrics/artifacts, resume, and a parent run per sweep.

The job's run is owned by task code (``JobRun``), not by the Hydra callback, because rerunning a
job from its saved config drops ``hydra.callbacks``. The sweep's parent run belongs to
``featsweep.sweep.SweepCallback``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import matplotlib.pyplot as plt
import requests
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from featsweep import naming
from featsweep.errors import FeatsweepError
from featsweep.results import StageResult

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


def _check_reachable(uri: str) -> None:
    """A tracking server that is down gives one clear error, instead of minutes of HTTP retries."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5)
    except requests.RequestException:
        raise FeatsweepError(
            f"The MLflow tracking server at {uri} cannot be reached. Start it (see README, 'A tracking server'), "
            "fix tracking.uri, or use the local store with tracking=local."
        ) from None


def _check_writable_sqlite(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FeatsweepError(f"Cannot create the MLflow store folder {folder}: {err}. Set tracking.uri to a writable place.") from None
        if not os.access(folder, os.W_OK):
            raise FeatsweepError(f"The MLflow store folder {folder} is not writable. Set tracking.uri to a writable place.")


def client_for(uri: str):

    _check_reachable(uri)
    _check_writable_sqlite(uri)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, artifact_root: str) -> str:
    """Create the store and experiment if needed, under a file lock (concurrent SQLite creation corrupts it)."""
    client = client_for(uri)
    lock_dir = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path(tempfile.gettempdir())
    with FileLock(str(lock_dir / ".featsweep_mlflow.lock"), timeout=120):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = Path(artifact_root).resolve().as_uri() if "://" not in artifact_root else artifact_root
        if urlparse(uri).scheme in ("http", "https"):
            location = None  # let the server choose (it may proxy artifacts)
        return client.create_experiment(name, artifact_location=location)


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


def finished_run_with_hash(client, experiment_id: str, digest: str) -> Optional[str]:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{HASH_TAG}` = '{digest}' and attributes.status = 'FINISHED'", max_results=1
    )
    return runs[0].info.run_id if runs else None


class JobRun:
    """The MLflow run of one job. Use as a context manager: an exception ends the run FAILED,
    with the error as a tag and a traceback artifact; what was logged before stays."""

    def __init__(self, cfg: Any, resolved: dict, out_dir: Optional[Path] = None):
        self.cfg = cfg
        self.resolved = resolved
        self.out_dir = out_dir or hydra_output_dir() or Path(tempfile.mkdtemp(prefix="featsweep-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.digest = config_hash(resolved)
        self.client = None
        self.run_id: Optional[str] = None
        self.skipped_for: Optional[str] = None  # run id of the identical FINISHED run, when resuming

    def __enter__(self) -> "JobRun":
        tracking = self.cfg.tracking
        experiment_id = ensure_experiment(tracking.uri, tracking.experiment, tracking.artifact_root)
        self.client = client_for(tracking.uri)
        parent = find_parent_run_id()
        if tracking.skip_finished:
            self.skipped_for = finished_run_with_hash(self.client, experiment_id, self.digest)
            if self.skipped_for:
                log.info("Skipping: identical config (hash %s) already FINISHED as run %s.", self.digest, self.skipped_for)
                if parent:
                    self.client.set_tag(parent, f"featsweep.skipped.{self.digest}", self.skipped_for)
                return self
        tags = {HASH_TAG: self.digest, "featsweep.output_dir": str(self.out_dir)}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
            tags["featsweep.git_commit"] = commit
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id, run_name=naming.job_run_name(tracking.run_name), tags={**tags, **naming.description()})
        self.run_id = run.info.run_id
        log.info("MLflow run %s (experiment '%s', %s)", self.run_id, tracking.experiment, tracking.uri)
        self._log_config()
        return self

    def _log_config(self) -> None:

        params = [Param(k[:250], v[:6000]) for k, v in flatten(self.resolved).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        config_dir = self.out_dir / "config"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(self.resolved)))
        (config_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(hydra_overrides())))
        self.client.log_artifacts(self.run_id, str(config_dir), "config")

    def tag(self, key: str, value: Any) -> None:
        if self.run_id:
            self.client.set_tag(self.run_id, key, str(value)[:5000])

    def log_result(self, result: StageResult) -> None:
        """Write a stage's tables and figures under the job's output dir, then log everything."""

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in result.metrics.items() if v is not None]
        for start in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 500])
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
        self.client.log_artifact(self.run_id, str(local), None if folder == "." else folder)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.run_id is None:
            return False
        status = "FINISHED"
        try:
            if exc is not None:
                status = "FAILED"
                message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FeatsweepError) else str(exc)
                self.tag("featsweep.error", message)
                error_file = self.out_dir / "error.txt"
                error_file.write_text("".join(traceback.format_exception(exc_type, exc, tb)))
                self.client.log_artifact(self.run_id, str(error_file))
            self._log_job_log()
        finally:
            self.client.set_terminated(self.run_id, status)
        return False

    def _log_job_log(self) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).exists():
                handler.flush()
                self.client.log_artifact(self.run_id, handler.baseFilename, "logs")
