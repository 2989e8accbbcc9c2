"""`python -m featsweep [overrides]` and `python -m featsweep -m <sweep>`: a thin Hydra entry point.

Errors: a FeatsweepError (bad input, unreachable store, ...) is one line on stderr, `featsweep: error: ...`,
exit status 1, and goes to the job's log file; any other exception is logged once with its traceback.
In a multirun, a failing job records its outcome and the sweep goes on; the sweep's end counts it.
SIGTERM ends the run KILLED and the process with status 143 (``featsweep.tracking.signals``); in a job that a
scheduler started as its own process (submitit: a Slurm time limit, scancel), the job is counted as failed instead
and returns, so the launcher collects the other jobs and the sweep's end runs.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from featsweep.tracking import signals  # noqa: E402
from featsweep.config import checked, register_configs  # noqa: E402
from featsweep.errors import FeatsweepError  # noqa: E402

register_configs()
log = logging.getLogger("featsweep")

HEADLINE = ["task.accuracy", "task.mean_prob", "network.n_edges", "h1.null_edges_mean", "network.n_kept_clusters",
            "h1.bootstrap_ari_mean", "h2.p", "h3.betweenness.p", "steering.linear_vs_exact_r", "h4.statistic"]
NO_OUTPUT_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


def _log_file_only(level: int, message: str) -> None:
    """Put a message in the job's log file but not on the console (it is printed once, on stderr)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _fail(message: str, multirun: bool) -> None:
    """One failure message: in a multirun, logged and recorded for the sweep's end; else on stderr, exit 1."""
    if multirun:
        from featsweep.sweep import record_failed_job

        hydra_cfg = HydraConfig.get()
        log.error("%s", message)
        record_failed_job(hydra_cfg.sweep.dir, hydra_cfg.job.num, message)
        return
    _log_file_only(logging.ERROR, message)
    print(f"featsweep: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def _job_failed(err: BaseException, multirun: bool) -> None:
    """A job whose pipeline raised: a signal ends the process, except in a job that a scheduler started on its
    own (its run is already KILLED; the sweep counts it and goes on); an error is recorded as the job's outcome."""
    from featsweep.sweep import record_job_outcome

    if signals.received is not None:  # the signal's doing, whatever error native code made of it
        if not (multirun and signals.in_scheduled_process()):
            if isinstance(err, signals.Terminated):
                raise err
            signals.raise_if_received(err)
        hydra_cfg = HydraConfig.get()
        record_job_outcome(hydra_cfg.sweep.dir, hydra_cfg.job.num, "failed", None,
                           f"ended by {signals.received} (a scheduler's time limit, scancel or pre-emption); its run "
                           "is KILLED. Run the same command again to resume the sweep")
        return None
    if isinstance(err, FeatsweepError):
        return _fail(str(err), multirun)
    log.exception("Job failed")  # the traceback, once (console and log file)
    if not multirun:
        sys.exit(1)
    hydra_cfg = HydraConfig.get()
    record_job_outcome(hydra_cfg.sweep.dir, hydra_cfg.job.num, "failed", None, f"{type(err).__name__}: {err}")
    return None


def _input_warnings(cfg) -> None:
    """Settings that run but change or weaken the results: one warning each."""
    import torch

    on_cpu = cfg.device.value == "cpu" or (cfg.device.value == "auto" and not torch.cuda.is_available())
    if cfg.dtype.value in ("float16", "bfloat16") and on_cpu:
        log.warning("dtype=%s on CPU: half precision changes the results (edges and clusters differ from float32) "
                    "and is not faster on CPU. Use dtype=float32 on CPU.", cfg.dtype.value)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def job(cfg: DictConfig) -> None:
    signals.install()  # again here: a launcher's worker process runs only this function
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        typed = checked(cfg)  # every value check, before the heavy imports: a bad value fails in about a second
    except FeatsweepError as err:
        return _fail(str(err), multirun)
    except Exception as err:  # an override that does not resolve (e.g. task.limit=${nope})
        return _fail(f"the config cannot be resolved: {type(err).__name__}: {str(err).splitlines()[0]}", multirun)
    # torch, MLflow and TransformerLens take seconds to import: only once the config is known to be good
    from featsweep import pipeline
    from featsweep.sweep import record_job_outcome
    from featsweep.reports.sweep_report import run_finished_message

    _input_warnings(typed)
    try:
        outcome = pipeline.run(cfg, typed=typed)
    except (Exception, signals.Terminated) as err:
        return _job_failed(err, multirun)
    if multirun:
        hydra_cfg = HydraConfig.get()
        status = "reused" if "skipped_for" in outcome else "finished"
        record_job_outcome(hydra_cfg.sweep.dir, hydra_cfg.job.num, status, outcome.get("skipped_for") or outcome["run_id"])
    if "skipped_for" in outcome:
        log.info("Skipped: this config already FINISHED as run %s (tracking.skip_finished=false reruns it).", outcome["skipped_for"])
        return None
    metrics = outcome["metrics"]
    headline = [k for k in HEADLINE if k in metrics]
    log.info("Run %s finished: %s", outcome["run_id"], ", ".join(f"{k}={metrics[k]:.4g}" for k in headline))
    log.info("%s", run_finished_message(outcome["run_id"], cfg.tracking.uri, outcome.get("experiment_id")))
    return None


def _writable(folder: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_working_directory(argv: list[str]) -> None:
    """Hydra writes outputs/ (multirun/) in the working directory before featsweep runs: say so in one line."""
    if any(a in NO_OUTPUT_FLAGS or a.split("=")[0] in NO_OUTPUT_FLAGS for a in argv):
        return
    key = "hydra.sweep.dir=" if ("-m" in argv or "--multirun" in argv) else "hydra.run.dir="
    if any(a.lstrip("+").startswith(key) for a in argv) or _writable(os.getcwd()):
        return
    print(f"featsweep: error: the working directory {os.getcwd()} is not writable, and featsweep writes there "
          "(outputs/, multirun/, the MLflow store mlflow.db, the stage cache). Run from a writable folder, or set "
          f"{key}/some/writable/dir tracking.uri=sqlite:////some/writable/mlflow.db "
          "tracking.artifact_root=/some/writable/mlruns cache.dir=/some/writable/cache.", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    """The console entry point: signals and the working directory first, then Hydra."""
    signals.install()
    _check_working_directory(sys.argv[1:])
    job()


if __name__ == "__main__":
    main()
