"""The pipeline in-process on the organism: stage selection, missing inputs, degenerate networks, the cache."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from featsweep import pipeline
from featsweep.errors import FeatsweepError
from helpers import compose_with


def compose_in(tmp_path, *overrides):
    return compose_with([f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns",
                         f"cache.dir={tmp_path}/cache", "task.limit=40", "clustering.n_null=5", "clustering.n_bootstrap=3", "clustering.n_rewire=5", "clustering.n_continuum=3",
                         *overrides])


def only_run(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.search_runs(experiment_names=["featsweep"])


def test_a_stage_whose_input_is_missing_is_a_clear_error(tmp_path):
    cfg = compose_in(tmp_path, "stages=[network]")
    with pytest.raises(FeatsweepError, match=r"needs the output of 'attribution'.*Add attribution to stages"):
        pipeline.run(cfg, out_dir=tmp_path / "out")
    run = only_run(tmp_path).iloc[0]
    assert run["status"] == "FAILED" and "attribution" in run["tags.featsweep.error"]


def test_a_later_stage_can_take_its_input_from_the_cache(tmp_path):
    pipeline.run(compose_in(tmp_path, "stages=[task,attribution]"), out_dir=tmp_path / "a")
    outcome = pipeline.run(compose_in(tmp_path, "stages=[network]"), out_dir=tmp_path / "b")
    assert "network.n_edges" in outcome["metrics"] and "attribution.n_selected_features" not in outcome["metrics"]
    runs = only_run(tmp_path).set_index("run_id")
    assert runs.loc[outcome["run_id"], "tags.featsweep.cache.attribution"] == "hit"


def test_a_change_to_a_stage_s_code_recomputes_it(tmp_path, monkeypatch):
    from featsweep.stages import attribution

    def status(*overrides):
        outcome = pipeline.run(compose_in(tmp_path, "stages=[task,attribution]", "tracking.skip_finished=false",
                                          *overrides), out_dir=tmp_path / f"out{len(only_run(tmp_path))}")
        return only_run(tmp_path).set_index("run_id").loc[outcome["run_id"], "tags.featsweep.cache.attribution"]

    assert status() == "miss" and status() == "hit"
    edited = tmp_path / "attribution.py"  # the stage's module as it is after an edit (read by the code digest)
    edited.write_text(Path(attribution.__file__).read_text() + "\n# a change\n")
    monkeypatch.setattr(attribution, "__file__", str(edited))
    assert status() == "miss" and status() == "hit"


def test_no_edge_skips_later_stages_with_a_reason_and_completes(tmp_path):
    outcome = pipeline.run(compose_in(tmp_path, "clustering.threshold=1.0"), out_dir=tmp_path / "out")
    run = only_run(tmp_path).iloc[0]
    assert run["status"] == "FINISHED"
    assert "clustering.threshold" in run["tags.featsweep.skip_reason"]
    assert run["tags.featsweep.stage.steering"].startswith("skipped:")
    assert not any(k.startswith("h2.") for k in outcome["metrics"])


def test_no_cluster_reaching_the_minimum_size_skips_steering(tmp_path):
    pipeline.run(compose_in(tmp_path, "clustering.min_cluster_size=1000"), out_dir=tmp_path / "out")
    run = only_run(tmp_path).iloc[0]
    assert run["status"] == "FINISHED" and "clustering.min_cluster_size" in run["tags.featsweep.skip_reason"]


@pytest.mark.parametrize("override,fragment", [
    ("steering.set_sizes=[0,2]", "set_sizes"),
    ("steering.set_sizes=[-1]", "set_sizes"),
    ("clustering.threshold=1.5", "clustering.threshold"),
    ("stages=[]", "stages"),
])
def test_bad_values_fail_before_any_run_with_a_message_naming_the_option(tmp_path, override, fragment):
    with pytest.raises(FeatsweepError, match=fragment):
        pipeline.run(compose_in(tmp_path, override), out_dir=tmp_path / "out")
    assert not (tmp_path / "mlflow.db").exists()  # checked before the store is even opened


def test_set_size_larger_than_a_kept_cluster_fails_once_the_clusters_are_known(tmp_path):
    with pytest.raises(FeatsweepError, match="steering.set_sizes has n=500"):
        pipeline.run(compose_in(tmp_path, "steering.set_sizes=[1,500]"), out_dir=tmp_path / "out")
    run = only_run(tmp_path).iloc[0]
    assert run["status"] == "FAILED" and run["tags.featsweep.stage.network"] == "done"  # earlier stages stay logged


def test_same_config_and_seed_give_the_same_numbers(tmp_path):
    first = pipeline.run(compose_in(tmp_path, "cache.enabled=false"), out_dir=tmp_path / "a")["metrics"]
    second = pipeline.run(compose_in(tmp_path, "cache.enabled=false", "tracking.skip_finished=false"), out_dir=tmp_path / "b")["metrics"]
    assert first == second
