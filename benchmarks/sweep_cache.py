"""Sweep benchmark: a 3-factor multirun with the stage cache against 3 single runs with the cache off.

    python benchmarks/sweep_cache.py              # the organism default, factors 1,10,30
    python benchmarks/sweep_cache.py --extra task.limit=30   # smaller, for a smoke test

Both arms run as real `python -m featsweep` subprocesses, side by side in one process, each in its
own fresh working directory (its own MLflow store and cache). Prints both wall times and, as its last
line, JSON: {"multirun_cached_s": a, "single_runs_uncached_s": b, "speedup": b / a}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def timed(args: list[str], cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "featsweep", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))
    if proc.returncode != 0:
        sys.exit(f"featsweep {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", default="1,10,30")
    parser.add_argument("--extra", nargs="*", default=[], help="extra overrides for both arms")
    args = parser.parse_args()
    factors = args.factors.split(",")
    with tempfile.TemporaryDirectory() as cached_dir, tempfile.TemporaryDirectory() as uncached_dir:
        cached = timed(["-m", f"steering.factor={args.factors}", *args.extra], cached_dir)
        uncached = sum(timed([f"steering.factor={f}", "cache.enabled=false", *args.extra], uncached_dir) for f in factors)
    print(f"{len(factors)}-job multirun, stage cache on : {cached:7.1f} s")
    print(f"{len(factors)} single runs, cache off        : {uncached:7.1f} s")
    print(f"speed-up                             : {uncached / cached:7.2f}x")
    print(json.dumps({"multirun_cached_s": round(cached, 1), "single_runs_uncached_s": round(uncached, 1),
                      "speedup": round(uncached / cached, 2)}))


if __name__ == "__main__":
    main()
