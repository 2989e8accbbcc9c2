"""`python -m featsweep [overrides]` and `python -m featsweep -m <sweep>`: a thin Hydra entry point."""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from featsweep.config import checked, register_configs  # noqa: E402
from featsweep.errors import FeatsweepError  # noqa: E402

register_configs()
log = logging.getLogger("featsweep")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        checked(cfg)  # every value check, before the heavy imports: a bad value fails in about a second
    except FeatsweepError as err:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:  # the sweep goes on; its end counts this job as failed
            from featsweep.sweep import record_failed_job

            log.error("%s", err)
            record_failed_job(hydra_cfg.sweep.dir, hydra_cfg.job.num, str(err))
            return None
        print(f"featsweep: error: {err}", file=sys.stderr)
        sys.exit(1)
    # torch, MLflow and TransformerLens take seconds to import: only once the config is known to be good
    from featsweep import pipeline
    from featsweep.sweep_report import run_finished_message
    from featsweep.tracking import is_multirun

    try:
        outcome = pipeline.run(cfg)
    except FeatsweepError as err:
        log.error("%s", err)
        if is_multirun():
            return None  # the run is FAILED in MLflow; the sweep goes on and reports it at the end
        print(f"featsweep: error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        log.exception("Job failed")
        if is_multirun():
            return None
        raise
    if "skipped_for" in outcome:
        log.info("Skipped: this config already FINISHED as run %s (tracking.skip_finished=false reruns it).", outcome["skipped_for"])
        return None
    metrics = outcome["metrics"]
    headline = [k for k in HEADLINE if k in metrics]
    log.info("Run %s finished: %s", outcome["run_id"], ", ".join(f"{k}={metrics[k]:.4g}" for k in headline))
    log.info("%s", run_finished_message(outcome["run_id"], cfg.tracking.uri))
    return None


HEADLINE = ["task.accuracy", "task.mean_prob", "network.n_edges", "h1.null_edges_mean", "network.n_kept_clusters",
            "h1.bootstrap_ari_mean", "h2.p", "h3.betweenness.p", "steering.linear_vs_exact_r"]


if __name__ == "__main__":
    main()
