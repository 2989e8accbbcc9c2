"""The front door: a built wheel, installed (not editable) into a fresh virtual environment, runs
`featsweep` from a folder outside the checkout, with the configs that ship inside the package.

To avoid downloading torch again, the fresh environment sees the project environment's installed
packages through a .pth file that points at a folder of links to them, without featsweep itself (its
editable install would otherwise shadow the wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import REPO, mlflow_runs

pytestmark = pytest.mark.slow


def _shadow_site_packages(target: Path) -> Path:
    """Links to every installed package of this environment except featsweep and its editable hooks."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in site.iterdir():
        if entry.name.lower().startswith(("featsweep", "__editable__")) or entry.suffix == ".pth":
            continue
        (target / entry.name).symlink_to(entry)
    return target


def test_wheel_installs_and_runs_from_anywhere(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves no build/ or egg-info in the checkout
    shutil.copytree(REPO / "featsweep", source / "featsweep", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("featsweep-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    new_site = next((venv / "lib").glob("python*/site-packages"))
    (new_site / "project_packages.pth").write_text(str(_shadow_site_packages(tmp_path / "shared_site")) + "\n")
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1")
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=600, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import featsweep; print(featsweep.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env)
    assert str(venv) in where.stdout, where.stdout + where.stderr  # the wheel, not the checkout
    assert (Path(where.stdout.strip()).parent / "conf" / "config.yaml").exists()
    run = subprocess.run([str(venv / "bin" / "featsweep"), "stages=[task]", "task.limit=5"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    runs = mlflow_runs(elsewhere)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED" and runs.iloc[0]["metrics.task.n_prompts"] == 5
