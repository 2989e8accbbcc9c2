"""Runs the stages in order (task -> attribution -> network -> steering) and hands each result to tracking.

Each stage is a plain function of its inputs. Expensive outputs go through the content-addressed
cache, so the jobs of a sweep that share a stage's inputs compute it once. A stage left out of
``stages`` may still feed a later stage from the cache; otherwise that is a clear error.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from featsweep.cache import StageCache, cache_key
from featsweep.config import Stage, to_container
from featsweep.errors import FeatsweepError
from featsweep.results import StageResult
from featsweep.tracking import JobRun

log = logging.getLogger(__name__)

ORDER = [Stage.task, Stage.attribution, Stage.network, Stage.steering]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validate(cfg: DictConfig) -> None:
    """Checks that need values, not just types (types are checked by the schema at compose time)."""
    if not cfg.stages:
        raise FeatsweepError("stages=[] runs nothing: give at least one of task, attribution, network, steering.")
    if not 0.0 <= cfg.clustering.threshold <= 1.0:
        raise FeatsweepError(f"clustering.threshold={cfg.clustering.threshold}: use a correlation in [0, 1].")
    if cfg.clustering.min_cluster_size < 1:
        raise FeatsweepError(f"clustering.min_cluster_size={cfg.clustering.min_cluster_size}: use 1 or more.")
    if not math.isfinite(cfg.steering.factor):
        raise FeatsweepError(f"steering.factor={cfg.steering.factor}: use a finite number.")
    bad_sizes = [n for n in cfg.steering.set_sizes if n < 1]
    if bad_sizes:
        raise FeatsweepError(f"steering.set_sizes has sizes below 1: {bad_sizes}. Use positive sizes, e.g. steering.set_sizes=[1,2,3,4].")


def _freeze_files(result: StageResult) -> dict[str, bytes]:
    return {path: Path(local).read_bytes() for path, local in result.files.items()}


def _thaw_files(result: StageResult, frozen: dict[str, bytes], out_dir: Path) -> None:
    for artifact_path, data in frozen.items():
        local = out_dir / artifact_path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        result.files[artifact_path] = local


class Runner:
    """Holds one job's state while its stages run."""

    def __init__(self, cfg: DictConfig, resolved: dict, job: JobRun):
        self.cfg = cfg
        self.resolved = resolved
        self.job = job
        self.stages = [Stage(s) for s in cfg.stages]
        self.cache = StageCache(cfg.cache.dir, cfg.cache.enabled)
        self.skip_reason: Optional[str] = None

    def cached(self, stage: str, key: str, compute: Callable[[], Any], wanted: bool) -> Any:
        """Run a stage through the cache; if the stage is not wanted, only a cache hit may stand in."""
        if wanted:
            value = self.cache.get_or_compute(stage, key, compute)
        else:
            value = self.cache.load(stage, key)
            if value is None:
                raise FeatsweepError(
                    f"A later stage needs the output of '{stage}', which is not in stages and not in the cache. "
                    f"Add {stage} to stages=[...] (the default runs all of them)."
                )
            self.cache.status[stage] = "hit"
        self.job.tag(f"featsweep.cache.{stage}", self.cache.status.get(stage, "off"))
        return value

    def log(self, stage: str, result: StageResult) -> None:
        self.job.log_result(result)
        self.job.tag(f"featsweep.stage.{stage}", "done")
        if result.skip_reason:
            self.skip_reason = result.skip_reason
            self.job.tag("featsweep.skip_reason", result.skip_reason)
            log.warning("Later stages skipped: %s", result.skip_reason)

    def needs(self, stage: Stage) -> bool:
        """Whether ``stage`` or a stage after it is wanted (so its output is needed)."""
        return any(ORDER.index(s) >= ORDER.index(stage) for s in self.stages)

    def skip(self, stage: Stage) -> bool:
        if self.skip_reason and stage in self.stages:
            self.job.tag(f"featsweep.stage.{stage.value}", f"skipped: {self.skip_reason}")
        return self.skip_reason is not None

    def run(self) -> dict[str, float]:
        from featsweep.subject import load_subject
        from featsweep.task import load_task, task_stage

        cfg = self.cfg
        seed_everything(cfg.seed)
        subject = load_subject(cfg)
        self.job.tag("featsweep.subject", subject.identity)
        for key, value in subject.notes.items():
            self.job.tag(f"featsweep.{key}", value)
        task = load_task(cfg.task, subject.model, cfg.seed)
        resolved = self.resolved
        task_key = cache_key("task", subject=subject.identity, task=resolved["task"], seed=cfg.seed, device=str(subject.model.cfg.device))
        metrics: dict[str, float] = {}

        baseline = None
        if Stage.task in self.stages or Stage.steering in self.stages:  # steering measures drops from it
            baseline, result = task_stage(subject.model, task, cfg.task.batch_size)
            if Stage.task in self.stages:
                self.log("task", result)
                metrics.update(result.metrics)

        if not self.needs(Stage.attribution):
            return metrics
        from featsweep.attribution import attribution_stage, max_activations

        attr_key = cache_key("attribution", task=task_key, attribution=resolved["attribution"])
        attrs, matrix, result = self.cached(
            "attribution", attr_key, lambda: attribution_stage(subject, task, cfg.attribution), Stage.attribution in self.stages
        )
        if Stage.attribution in self.stages:
            self.log("attribution", result)
            metrics.update(result.metrics)
        elif result.skip_reason:
            self.skip_reason = result.skip_reason
        if not self.needs(Stage.network) or self.skip(Stage.network):
            return metrics

        from featsweep.network import network_stage

        gen_key = cache_key("gen_max", subject=subject.identity, texts=subject.generic_texts)
        gen_max = self.cached("gen_max", gen_key, lambda: max_activations(subject, subject.generic_texts), True)
        net_key = cache_key("network", attribution=attr_key, clustering=resolved["clustering"], seed=cfg.seed)

        def compute_network():
            network, result = network_stage(matrix, cfg.clustering, cfg.seed, gen_max, subject.neuronpedia_id, self.job.out_dir / "network")
            return network, result, _freeze_files(result)

        network, result, frozen = self.cached("network", net_key, compute_network, Stage.network in self.stages)
        _thaw_files(result, frozen, self.job.out_dir)
        if Stage.network in self.stages:
            self.log("network", result)
            metrics.update(result.metrics)
        elif result.skip_reason:
            self.skip_reason = result.skip_reason
        if Stage.steering not in self.stages or self.skip(Stage.steering):
            return metrics

        from featsweep.experiments import steering_stage

        result = steering_stage(subject, task, attrs, network, baseline, gen_max, cfg.steering, cfg.seed)
        self.log("steering", result)
        metrics.update(result.metrics)
        return metrics


def run(cfg: DictConfig, out_dir: Optional[Path] = None) -> dict[str, Any]:
    """Run one job: open its MLflow run, run the wanted stages, close the run (FAILED on error)."""
    resolved = to_container(cfg)
    with JobRun(cfg, resolved, out_dir) as job:
        if job.skipped_for:
            return {"skipped_for": job.skipped_for}
        validate(cfg)
        metrics = Runner(cfg, resolved, job).run()
        return {"run_id": job.run_id, "metrics": metrics}
