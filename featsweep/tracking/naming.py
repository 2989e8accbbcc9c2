"""Run names and descriptions that explain themselves.

A job of a sweep is named after the overrides that distinguish it from its siblings (``steering.factor=30``,
or ``sae.layer=6 steering.factor=30``): the keys that the sweep's command line swept. A single run is
named from all of its overrides, or after its preset (``experiment=organism``) when it has none. A
sweep's parent run is named after its dimensions (``sweep steering.factor=1,10,30``). ``tracking.run_name``
always wins. Each run also gets a description (MLflow's ``mlflow.note.content`` tag): the command line and
the preset, which the MLflow UI shows at the top of the run page.

The parent learns the sweep's overrides on the command line; the jobs (which may run in other processes,
under joblib or SLURM) read the swept keys from a file the parent leaves in the sweep directory.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from mlflow.tracking.context.registry import resolve_tags

from featsweep.tracking.store import mask

SWEEP_KEYS_FILE = ".featsweep_swept_keys"
MAX_NAME = 250  # MLflow's limit on a run name is generous; the UI's chart legends are not
NOTE_TAG = "mlflow.note.content"
# Overrides that say where results go or how Hydra runs, not what a run computes.
NOT_DISTINGUISHING = ("tracking.", "cache.", "hydra.", "hydra/")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys of a sweep's command-line overrides that take several values (``a=1,2``, ``range(...)``)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a malformed override fails in Hydra itself, with Hydra's message
        return []
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def remember_sweep(sweep_dir: Path, overrides: list[str]) -> list[str]:
    """Called by the sweep's parent: leave the swept keys where every job can read them."""
    keys = swept_keys(overrides)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SWEEP_KEYS_FILE).write_text("\n".join(keys))
    return keys


def parent_run_name(overrides: list[str], sweep_dir: Path) -> str:
    """``sweep steering.factor=1,10,30``: the swept overrides, else every override, else the sweep folder."""
    keys = set(swept_keys(overrides))
    shown = [o for o in overrides if _key(o) in keys] or [o for o in overrides if not _key(o).startswith(NOT_DISTINGUISHING)]
    return _clip("sweep " + (" ".join(shown) if shown else f"{sweep_dir.parent.name}/{sweep_dir.name}"))


def job_run_name(explicit: Optional[str] = None) -> Optional[str]:
    """The run name of the current Hydra job (``None`` outside Hydra lets MLflow choose)."""
    if explicit:
        return explicit
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not _key(o).startswith(NOT_DISTINGUISHING)]
    keys_file = Path(hydra_cfg.sweep.dir) / SWEEP_KEYS_FILE
    if hydra_cfg.mode == RunMode.MULTIRUN and keys_file.exists():
        keys = set(keys_file.read_text().split())
        distinguishing = [o for o in overrides if _key(o) in keys]
        overrides = distinguishing or overrides
    if overrides:
        return _clip(" ".join(overrides))
    return f"experiment={preset() or 'default'}"


def preset() -> Optional[str]:
    """The ``experiment=`` preset of the current Hydra job."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("experiment")


def description(role: str = "run", config=None) -> dict[str, str]:
    """The run's description tag: how it was launched, and with which preset (read from ``config``'s
    ``hydra.runtime.choices`` when given, as in the sweep callback, else from the running Hydra job); plus
    the context tags that ``mlflow.start_run`` would set (user, source name and type, git), from MLflow's
    own context registry, so the UI's User and Source columns are filled in."""
    program = Path(sys.argv[0]).name if sys.argv else "featsweep"
    program = "python -m featsweep" if program == "__main__.py" else program
    command = " ".join([program, *(shlex.quote(a) for a in sys.argv[1:])])
    lines = [f"featsweep {role}, launched with:", "", f"    {command}", "", f"preset: experiment={_preset_of(config) or preset() or 'none'}"]
    if HydraConfig.initialized() and role == "run":
        lines.append(f"output folder: {HydraConfig.get().runtime.output_dir}")
    return {**resolve_tags(), NOTE_TAG: mask("\n".join(lines))}  # no password of a tracking.uri override


def _preset_of(config) -> Optional[str]:
    try:
        return config.hydra.runtime.choices.get("experiment") if config is not None else None
    except Exception:  # a config without Hydra's node
        return None


def _clip(name: str) -> str:
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 3] + "..."
