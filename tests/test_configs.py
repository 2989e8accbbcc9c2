"""Every config composes against the schema; bad overrides fail at compose time with a readable message."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from helpers import CONF, REPO, compose_with, run_featsweep
from featsweep.config import (AttributionConfig, ClusteringConfig, Config, SteeringConfig, TaskConfig, checked,
                              to_container)
from featsweep.errors import FeatsweepError

GROUPS = ["model", "sae", "task", "attribution", "corpus", "clustering", "cooccurrence", "steering", "tracking",
          "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes(group, option, monkeypatch):
    overrides = [f"{group}={option}"]
    monkeypatch.setenv("FEATSWEEP_TRACKING_URI", "postgresql://user:secret@localhost:5432/mlflow")  # tracking=postgres
    if group == "sae" and option != "organism":
        overrides.append("model=gpt2-small")
    cfg = compose_with(overrides)
    resolved = to_container(cfg)
    OmegaConf.merge(OmegaConf.structured(Config), resolved)  # validates against the schema again
    assert resolved["tracking"]["uri"].startswith(("sqlite:////", "http", "postgresql://"))  # absolute path or a server


def test_every_group_has_an_option():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no option"


def test_seed_experiment_selects_the_blog_settings():
    cfg = compose_with(["experiment=seed"])
    assert cfg.model.name == "gpt2-small"
    assert cfg.sae.release == "gpt2-small-res-jb" and cfg.sae.sae_id == "blocks.7.hook_resid_pre"
    assert cfg.clustering.threshold == 0.7 and cfg.clustering.min_cluster_size == 10
    assert cfg.attribution.aggregation.value == "last_nonzero"


@pytest.mark.parametrize(
    "override,fragment",
    [("steering.factor=abc", "steering.factor"), ("device=tpu", "expected one of"), ("clustering.treshold=0.5", "treshold"),
     ("stages=[task,plot]", "stages")],
)
def test_bad_override_fails_at_compose_time(override, fragment):
    with pytest.raises((ValidationError, ConfigCompositionException)) as info:
        compose_with([override])
    message = str(info.value) + str(info.value.__cause__ or "")
    assert fragment in message


def test_unknown_group_choice_lists_the_options():
    with pytest.raises(ConfigCompositionException) as info:
        compose_with(["model=gpt3"])
    assert "organism" in str(info.value) and "gpt2-small" in str(info.value)


def test_bad_override_on_the_command_line_is_readable(tmp_path):
    proc = run_featsweep(tmp_path, "steering.factor=abc")
    assert proc.returncode != 0
    assert "steering.factor" in proc.stderr and "Traceback" not in proc.stderr
    assert not (Path(tmp_path) / "mlflow.db").exists()  # nothing ran


@pytest.mark.parametrize("override,fragment", [
    ("clustering.threshold=0", "clustering.threshold=0.0: use a correlation in (0, 1]"),
    ("steering.engine=bogus", "expected one of [fast, reference]"),
    ("steering.set_sizes=[0]", "steering.set_sizes=[0]"),
    ("task.limit=1", "task.limit=1"),
])
def test_a_bad_value_fails_fast_on_the_command_line_and_creates_no_run(tmp_path, override, fragment):
    start = time.perf_counter()
    proc = run_featsweep(tmp_path, override)
    seconds = time.perf_counter() - start
    assert proc.returncode != 0 and fragment in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count(fragment) == 1  # said once
    assert not (tmp_path / "mlflow.db").exists()  # checked before any run or store exists
    assert seconds < 30, seconds  # generous for a loaded CI machine; about 2 s when idle (no model loads)


@pytest.mark.parametrize("section,values,fragment", [
    ("clustering", dict(threshold=1.5), "clustering.threshold"),
    ("clustering", dict(min_cluster_size=0), "clustering.min_cluster_size"),
    ("clustering", dict(max_features=1), "clustering.max_features"),
    ("clustering", dict(centrality_sources=1), "clustering.centrality_sources"),
    ("clustering", dict(n_null=-1), "clustering.n_null"),
    ("clustering", dict(n_continuum=-1), "clustering.n_continuum"),
    ("steering", dict(factor=float("inf")), "steering.factor"),
    ("steering", dict(batch_size=0), "steering.batch_size"),
    ("attribution", dict(min_fraction=0.0), "attribution.min_fraction"),
    ("task", dict(limit=0), "task.limit"),
])
def test_each_section_checks_its_own_values(section, values, fragment):
    schema = {"clustering": ClusteringConfig, "steering": SteeringConfig, "attribution": AttributionConfig,
              "task": TaskConfig}[section]
    with pytest.raises(FeatsweepError, match=fragment):
        schema(**values)
    with pytest.raises(FeatsweepError, match=fragment):  # and through a composed config, as a run sees it
        checked(compose_with([f"{section}.{k}={'inf' if v == float('inf') else v}" for k, v in values.items()]))


def test_seed_preset_is_the_blogs_setup_and_sweeps_its_factors():
    from featsweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=seed"], return_hydra_config=True)
    assert cfg.task.filter == "correct_top1" and cfg.clustering.recluster_kept is True
    assert cfg.steering.factor_base == 2.0 and cfg.steering.factor == 10.0  # one run at the blog's factor 10
    assert str(cfg.hydra.sweeper.params["steering.factor"]) == "0.1,1,2,5,10,20,30,40"
    plain = checked(compose_with([]))
    assert plain.task.filter.value == "none" and plain.steering.factor_base == 1.0 and not plain.clustering.recluster_kept
