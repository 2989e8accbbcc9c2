"""Reproduce a run from its logged config in a new run, then compare every metric.

    python -m featsweep.rerun RUN_ID [--uri sqlite:///path/mlflow.db] [--use-cache] [--rtol 0]

The cache is off by default, so every stage is really recomputed. Exit status 0 when every metric
matches (same config and seed give the same numbers), 1 when any differs (they are named).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from featsweep import pipeline
from featsweep.config import Config
from featsweep.errors import FeatsweepError
from featsweep.tracking import client_for


def load_logged_config(client, run_id: str):
    try:
        client.get_run(run_id)
    except Exception:
        raise FeatsweepError(f"Unknown run id {run_id}: no such run in this store (check --uri).") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, "config/config.yaml", tmp)
        except Exception:
            raise FeatsweepError(f"Run {run_id} has no config/config.yaml artifact, so it cannot be rerun.") from None
        logged = OmegaConf.load(local)
    return OmegaConf.merge(OmegaConf.structured(Config), logged)


def compare_metrics(original: dict[str, float], new: dict[str, float], rtol: float = 0.0) -> tuple[list[str], list[tuple[str, float, float]]]:
    """Return (matching names, [(name, original, new) that differ]). NaN equals NaN."""
    same, differ = [], []
    for name in sorted(set(original) | set(new)):
        a, b = original.get(name, math.nan), new.get(name, math.nan)
        if (math.isnan(a) and math.isnan(b)) or (name in original and name in new and math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)):
            same.append(name)
        else:
            differ.append((name, a, b))
    return same, differ


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featsweep.rerun", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id")
    parser.add_argument("--uri", default=f"sqlite:///{os.getcwd()}/mlflow.db", help="tracking URI (default: ./mlflow.db)")
    parser.add_argument("--use-cache", action="store_true", help="allow cached stage outputs (default: recompute everything)")
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for 'same' (default 0: identical)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        client = client_for(args.uri)
        cfg = load_logged_config(client, args.run_id)
        cfg.tracking.uri = args.uri
        cfg.tracking.skip_finished = False
        cfg.tracking.run_name = f"rerun of {args.run_id[:8]}"
        cfg.cache.enabled = bool(args.use_cache)
        out_dir = Path("outputs") / "rerun" / args.run_id
        outcome = pipeline.run(cfg, out_dir=out_dir)
        client.set_tag(outcome["run_id"], "featsweep.rerun_of", args.run_id)
    except FeatsweepError as err:
        print(f"featsweep.rerun: error: {err}", file=sys.stderr)
        return 1
    original = client.get_run(args.run_id).data.metrics
    new = client.get_run(outcome["run_id"]).data.metrics
    same, differ = compare_metrics(original, new, args.rtol)
    print(f"Rerun of {args.run_id} is run {outcome['run_id']}.")
    for name in same:
        print(f"  same     {name} = {original.get(name)}")
    for name, a, b in differ:
        print(f"  DIFFERS  {name}: {a} -> {b}")
    verdict = "every metric identical" if not differ and args.rtol == 0 else f"{len(same)} match, {len(differ)} differ"
    print(f"{len(same) + len(differ)} metrics: {verdict}.")
    client.set_tag(outcome["run_id"], "featsweep.rerun_matches", str(not differ))
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
