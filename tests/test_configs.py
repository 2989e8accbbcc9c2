"""Every config composes against the schema; bad overrides fail at compose time with a readable message."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import REPO, run_featsweep
from featsweep.config import Config, register_configs, to_container

CONF = REPO / "conf"
GROUPS = ["model", "sae", "task", "attribution", "clustering", "steering", "tracking", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "sae" and option != "organism":
        overrides.append("model=gpt2-small")
    cfg = compose_with(overrides)
    resolved = to_container(cfg)
    OmegaConf.merge(OmegaConf.structured(Config), resolved)  # validates against the schema again
    assert resolved["tracking"]["uri"].startswith(("sqlite:////", "http"))  # absolute sqlite path or a server


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
