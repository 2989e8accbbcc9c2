"""Runs the stages in order (task -> attribution -> network -> cooccurrence -> steering) and hands each result to tracking.

Each stage is a plain function of its inputs that returns ``(output, StageResult)``; the result holds
everything the stage made (metrics, tables, figures, files). Attribution and the network go through the
content-addressed cache whole, so the jobs of a sweep that share a stage's inputs compute it once. A
cached stage left out of ``stages`` may still feed a later stage from the cache; otherwise that is a
clear error. One code path runs every stage: cache, log, skip reason. The co-occurrence stage runs even
when an earlier stage skips the rest (it needs only the corpus; H4 then reports itself inconclusive).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from featsweep.stages.attribution import attribution_stage
from featsweep.tracking.cache import StageCache, cache_key, code_digest
from featsweep.config import Config, Stage, checked, to_container
from featsweep.errors import FeatsweepError
from featsweep.stages.steering import steering_stage
from featsweep.tracking.inputs import log_run_inputs
from featsweep.stages.network import network_stage
from featsweep.reports.run_report import Report
from featsweep.reports.dashboards import describe_network
from featsweep.subjects.organism import ASSETS_DIR
from featsweep.engines.cooccurrence import (CooccurrenceCounter, Counts, check_window, cooccurrence_counting,
                                           sae_threshold)
from featsweep.stages.dictionary import cooccurrence_stage
from featsweep.results import StageResult
from featsweep.stages.corpus import CorpusStats, corpus_stage, row_context
from featsweep.stages.corpus_text import corpus_documents, corpus_fingerprint
from featsweep.subjects.loading import load_subject
from featsweep.stages.task import load_task, task_stage
from featsweep.tracking.run import JobRun

log = logging.getLogger(__name__)

ORDER = [Stage.task, Stage.attribution, Stage.network, Stage.cooccurrence, Stage.steering]
# The stage outputs each stage consumes (the prompts themselves come from load_task, not the task stage).
INPUTS = {
    Stage.task: (),
    Stage.attribution: (),
    Stage.network: (Stage.attribution,),
    Stage.cooccurrence: (Stage.network,),  # H4 reads the task's clusters
    Stage.steering: (Stage.task, Stage.attribution, Stage.network),
}
CACHED = {Stage.attribution, Stage.network}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stages_to_compute(wanted: list[Stage]) -> list[Stage]:
    """The wanted stages plus every stage whose output they consume, in pipeline order."""
    needed = set(wanted)
    for stage in reversed(ORDER):
        if stage in needed:
            needed.update(INPUTS[stage])
    return [s for s in ORDER if s in needed]


class Runner:
    """Holds one job's state while its stages run."""

    def __init__(self, cfg: Config, resolved: dict, job: JobRun):
        self.cfg = cfg
        self.resolved = resolved
        self.job = job
        self.stages = list(cfg.stages)
        self.cache = StageCache(cfg.cache.dir, cfg.cache.enabled)
        self.skip_reason: Optional[str] = None
        self.outputs: dict[Stage, Any] = {}
        self._corpus: Optional[CorpusStats] = None
        self.report = Report()  # report.html: collects every logged result (figures before they close)

    def run(self) -> dict[str, float]:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.subject = load_subject(cfg)
        self.job.tag("featsweep.subject", self.subject.identity)
        for key, value in self.subject.notes.items():
            self.job.tag(f"featsweep.{key}", value)
        self.task = load_task(cfg.task, self.subject.model, cfg.seed)
        log_run_inputs(self.job, cfg, self.subject, self.task)
        metrics: dict[str, float] = {}
        for stage in stages_to_compute(self.stages):
            if self.skip_reason and stage is not Stage.cooccurrence:
                if stage in self.stages:
                    self.job.tag(f"featsweep.stage.{stage.value}", f"skipped: {self.skip_reason}")
                continue
            key, compute = self.plan(stage)
            start = time.perf_counter()
            output, result = self.run_stage(stage, key, compute)
            seconds = time.perf_counter() - start
            self.job.tag(f"featsweep.seconds.{stage.value}", f"{seconds:.1f}")  # a tag: reruns compare metrics
            log.info("Stage %s: %.1f s", stage.value, seconds)
            self.outputs[stage] = output
            if stage in self.stages:
                self.log(stage, result)
                metrics.update(result.metrics)
                if stage is Stage.network and output is not None:
                    self.describe(output)
            if result.skip_reason:
                self.skip_reason = result.skip_reason
        self.job.log_result(self.report.result(self.resolved))
        return metrics

    def plan(self, stage: Stage) -> tuple[Optional[str], Callable[[], tuple[Any, StageResult]]]:
        """The cache key (None: not cached) and the computation of one stage."""
        cfg, subject, task, out = self.cfg, self.subject, self.task, self.outputs
        task_key = cache_key("task", code=load_task, subject=subject.identity, task=self.resolved["task"], seed=cfg.seed,
                             device=str(subject.model.cfg.device))
        attr_key = cache_key("attribution", code=attribution_stage, task=task_key, attribution=self.resolved["attribution"])
        if stage is Stage.task:
            return None, lambda: task_stage(subject.model, task, cfg.task.batch_size)
        if stage is Stage.attribution:
            return attr_key, lambda: attribution_stage(subject, task, cfg.attribution)
        if stage is Stage.network:
            # the corpus too: the features table carries each feature's gen_max from the corpus stage
            net_key = cache_key("network", code=network_stage, attribution=attr_key,
                                clustering=self.resolved["clustering"], seed=cfg.seed, corpus=self.resolved["corpus"])
            return net_key, lambda: network_stage(out[Stage.attribution].matrix, cfg.clustering, cfg.seed,
                                                  self.generic_max(), subject.neuronpedia_id)
        if stage is Stage.cooccurrence:
            return None, lambda: cooccurrence_stage(self.cooc_counts(), cfg.cooccurrence, cfg.seed,
                                                    out.get(Stage.network), subject)
        return None, lambda: steering_stage(subject, task, out[Stage.attribution].attrs, out[Stage.network],
                                            out[Stage.task], self.generic_max(), cfg.steering, cfg.seed)

    def generic_max(self) -> np.ndarray:
        """Each feature's max activation on the corpus (``gen_max``), from the corpus stage."""
        return self.corpus().max

    def corpus(self) -> CorpusStats:
        """The corpus stage (featsweep/stages/corpus.py), computed on first need, cached per subject and corpus;
        its result is logged with the stage that first needed it."""
        if self._corpus is None:
            cfg = self.cfg
            assets = Path(cfg.model.assets_dir) if cfg.model.assets_dir else ASSETS_DIR
            # with the cooccurrence stage, the same pass counts co-occurrence too (its settings join the key)
            counting = ({**cooccurrence_counting(cfg.cooccurrence), "code": code_digest(CooccurrenceCounter)}
                        if Stage.cooccurrence in self.stages else None)
            key = cache_key("corpus", code=corpus_stage, subject=self.subject.identity, corpus=self.resolved["corpus"],
                            fingerprint=corpus_fingerprint(cfg.corpus, cfg.model, assets, cfg.sae),
                            device=str(self.subject.model.cfg.device), counting=counting)

            def compute():
                counter = None
                if counting is not None:
                    check_window(cfg.cooccurrence, row_context(cfg.corpus, int(self.subject.model.cfg.n_ctx)))
                    counter = CooccurrenceCounter.from_config(cfg.cooccurrence, self.subject.d_sae,
                                                              sae_threshold(self.subject.sae))
                return corpus_stage(self.subject, corpus_documents(cfg.corpus, cfg.model, assets, cfg.sae), cfg.corpus,
                                    counter=counter)

            start = time.perf_counter()
            self._corpus, result = self.cache.get_or_compute("corpus", key, compute)
            self.job.tag("featsweep.cache.corpus", self.cache.status.get("corpus", "off"))
            self.job.tag("featsweep.seconds.corpus", f"{time.perf_counter() - start:.1f}")
            self.report.collect(result)
            self.job.log_result(result)
        return self._corpus

    def describe(self, network) -> None:
        """What the network's features and clusters are: features.html, its tables, report.html's cluster cards."""
        result, self.report.cards = describe_network(network, self.corpus(), self.task.frame["answer"],
                                                     self.subject.model.tokenizer)
        self.job.log_result(result)

    def cooc_counts(self) -> Counts:
        """Corpus co-occurrence counts, counted in the corpus stage's one pass (cached with it)."""
        return self.corpus().cooccurrence

    def run_stage(self, stage: Stage, key: Optional[str], compute: Callable[[], tuple[Any, StageResult]]
                  ) -> tuple[Any, StageResult]:
        """Compute a stage, through the cache when it has a key. A cached stage that is not wanted may
        only stand in from the cache."""
        if key is None:
            return compute()
        if stage in self.stages:
            value = self.cache.get_or_compute(stage.value, key, compute)
        else:
            value = self.cache.load(stage.value, key)
            if value is None:
                raise FeatsweepError(
                    f"A later stage needs the output of '{stage.value}', which is not in stages and not in the "
                    f"cache. Add {stage.value} to stages=[...] (the default runs all of them).")
            self.cache.status[stage.value] = "hit"
        self.job.tag(f"featsweep.cache.{stage.value}", self.cache.status.get(stage.value, "off"))
        return value

    def log(self, stage: Stage, result: StageResult) -> None:
        self.report.collect(result)
        self.job.log_result(result)
        self.job.tag(f"featsweep.stage.{stage.value}", "done")
        if result.skip_reason:
            self.job.tag("featsweep.skip_reason", result.skip_reason)
            log.warning("Later stages skipped: %s", result.skip_reason)


def run(cfg: Any, out_dir: Optional[Path] = None, typed: Optional[Config] = None) -> dict[str, Any]:
    """Run one job: check the config, open its MLflow run, run the wanted stages, close the run (FAILED
    on error). A bad config value raises before any run exists. ``typed``: the config already checked by the
    caller (``__main__`` checks before the heavy imports), so it is checked once."""
    typed = typed if typed is not None else checked(cfg)
    resolved = to_container(cfg)
    with JobRun(typed, resolved, out_dir) as job:
        if job.skipped_for:
            return {"skipped_for": job.skipped_for}
        metrics = Runner(typed, resolved, job).run()
        return {"run_id": job.run_id, "experiment_id": job.experiment_id, "metrics": metrics}
