"""Tracking helpers: flattened params, the config hash that resume relies on, and a job run's lifecycle."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from featsweep.config import checked, to_container
from featsweep.errors import FeatsweepError
from featsweep.results import StageResult
from featsweep.tracking.run import JobRun, config_hash, flatten
from helpers import compose_with


def test_flatten_gives_dotted_keys_and_json_lists():
    nested = {"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": "x"}
    assert flatten(nested) == {"a.b": "1", "a.c.d": "None", "e": "[1, 2]", "f": "x"}


def test_config_hash_ignores_where_results_go_but_not_what_is_computed():
    base = {"seed": 0, "steering": {"factor": 10.0}, "tracking": {"uri": "a"}, "cache": {"dir": "x"}}
    moved = {**base, "tracking": {"uri": "b"}, "cache": {"dir": "y"}, "hydra": {"run": "z"}}
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash({**base, "steering": {"factor": 30.0}})
    assert config_hash(base) == config_hash(dict(reversed(list(base.items()))))  # key order does not matter
    assert len(config_hash(base)) == 16


def _cfg(tmp_path, *overrides):
    return compose_with([f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns",
                         *overrides])


def test_job_run_logs_params_and_results_and_finishes(tmp_path):
    cfg = _cfg(tmp_path)
    with JobRun(checked(cfg), to_container(cfg), tmp_path / "out") as job:
        job.log_result(StageResult(metrics={"x.y": 2.5, "x.inf": float("inf"), "x.nan": float("nan")},
                                   tags={"x.tag": "v"}, files={"network/g.graphml": b"<g/>"}))
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(job.run_id)
    assert run.info.status == "FINISHED"
    nan = run.data.metrics.pop("x.nan")
    assert nan != nan  # NaN is stored as NaN; an infinity (MLflow's 1.8e308) is not logged at all
    assert run.data.metrics == {"x.y": 2.5} and run.data.tags["x.tag"] == "v"
    assert run.data.params["steering.factor"] == str(float(cfg.steering.factor))
    assert run.data.tags["featsweep.config_hash"] == job.digest
    assert (tmp_path / "out" / "network" / "g.graphml").read_bytes() == b"<g/>"


def test_job_run_ends_failed_and_keeps_what_was_logged(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(FeatsweepError):
        with JobRun(checked(cfg), to_container(cfg), tmp_path / "out") as job:
            job.log_result(StageResult(metrics={"before": 1.0}))
            raise FeatsweepError("broken on purpose")
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(job.run_id)
    assert run.info.status == "FAILED" and run.data.tags["featsweep.error"] == "broken on purpose"
    assert run.data.metrics == {"before": 1.0}


def test_a_finished_identical_config_is_skipped(tmp_path):
    cfg = _cfg(tmp_path)
    with JobRun(checked(cfg), to_container(cfg), tmp_path / "a") as first:
        pass
    with JobRun(checked(cfg), to_container(cfg), tmp_path / "b") as second:
        assert second.skipped_for == first.run_id and second.run_id is None
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(mlflow.search_runs(experiment_names=["featsweep"])) == 1
