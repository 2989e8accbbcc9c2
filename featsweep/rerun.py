"""Reproduce a run from its logged config in a new run, then compare every metric.

    python -m featsweep.rerun RUN_ID [--uri sqlite:///path/mlflow.db] [--use-cache] [--rtol 1e-5]

The cache is off by default, so every stage is really recomputed. Exit status 0 when every metric
matches, 1 when any differs (they are named).

What "the same" means. Two things change float32 results without changing the config: the number of
torch threads (a matmul's reduction order depends on it: a joblib worker runs with 1 thread, a plain
run with all cores; measured relative differences up to 1.3e-6) and the library versions. Every run
logs both (``featsweep.torch_threads``, ``featsweep.version.*``). The rerun *pins* the thread count to
the original's (and the BLAS thread count, ``featsweep.blas_threads``), so on the same machine and
versions the numbers are identical, and warns about any
version that differs. It then compares with a stated relative tolerance (``--rtol``, default 1e-5:
ten times the reduction-order noise, far below any effect the method measures) and always reports
the largest relative difference, so "identical" and "equal within 1e-5" are told apart.
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
from threadpoolctl import threadpool_limits

from featsweep import pipeline
from featsweep.config import Config
from featsweep.errors import FeatsweepError
from featsweep.tracking.run import client_for


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


DEFAULT_RTOL = 1e-5
_PINNED: list = []  # thread-pool limits set for the rerun


def relative_difference(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def compare_metrics(original: dict[str, float], new: dict[str, float], rtol: float = DEFAULT_RTOL) -> tuple[list[str], list[tuple[str, float, float]]]:
    """Return (matching names, [(name, original, new) that differ]). NaN equals NaN."""
    same, differ = [], []
    for name in sorted(set(original) | set(new)):
        a, b = original.get(name, math.nan), new.get(name, math.nan)
        if (math.isnan(a) and math.isnan(b)) or (name in original and name in new and math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)):
            same.append(name)
        else:
            differ.append((name, a, b))
    return same, differ


def pin_environment(tags: dict[str, str]) -> None:
    """Use the original run's torch and BLAS thread counts; warn about library versions that differ from it."""
    import torch

    from featsweep.tracking.run import environment_tags

    threads = tags.get("featsweep.torch_threads")
    if threads:
        torch.set_num_threads(int(threads))
    blas = tags.get("featsweep.blas_threads")
    if blas:  # kept for the life of the process
        _PINNED.append(threadpool_limits(limits=int(blas), user_api="blas"))
    here = environment_tags()
    for key, value in tags.items():
        if key.startswith("featsweep.version.") and here.get(key, value) != value:
            print(f"featsweep.rerun: warning: {key.removeprefix('featsweep.version.')} is {here[key]} here but was "
                  f"{value} in the original run; small numeric differences may follow.", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featsweep.rerun", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id")
    parser.add_argument("--uri", default=f"sqlite:///{os.getcwd()}/mlflow.db", help="tracking URI (default: ./mlflow.db)")
    parser.add_argument("--use-cache", action="store_true", help="allow cached stage outputs (default: recompute everything)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"relative tolerance for 'same' (default {DEFAULT_RTOL}; 0 demands identical numbers)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        client = client_for(args.uri)
        cfg = load_logged_config(client, args.run_id)
        pin_environment(client.get_run(args.run_id).data.tags)
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
    names = sorted(set(original) | set(new))
    largest = max((relative_difference(original.get(n, math.nan), new.get(n, math.nan)) for n in names), default=0.0)
    identical = sum(relative_difference(original.get(n, math.nan), new.get(n, math.nan)) == 0 for n in names)
    if identical == len(names):
        print(f"{len(names)} metrics: every metric identical (largest relative difference 0).")
    else:
        print(f"{len(names)} metrics: {identical} identical, {len(same)} equal within rtol={args.rtol:g}, {len(differ)} "
              f"differ; largest relative difference {largest:.3g}.")
    client.set_tag(outcome["run_id"], "featsweep.rerun_matches", str(not differ))
    client.set_tag(outcome["run_id"], "featsweep.rerun_rtol", f"{args.rtol:g}")
    client.set_tag(outcome["run_id"], "featsweep.rerun_max_rel_diff", f"{largest:.6g}")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
