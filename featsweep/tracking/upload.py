"""Log a job's output folder to MLflow after the fact: for jobs whose tracking store went away mid-run.

    python -m featsweep.tracking.upload OUTPUT_DIR [--uri URI]

Every job writes what it logged, or meant to log, under its output folder: ``featsweep_run.json`` (the
journal: params, tags, metrics, status, error, the list of artifact files) next to the files themselves.
If the job's run exists in the store (it was created before the store went away), it is completed there:
the missing metrics, tags and artifacts are logged and it gets the job's final status. Otherwise a new
run is created with everything. ``--uri`` defaults to the store the job used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from mlflow.entities import Metric, Param

from featsweep.errors import FeatsweepError
from featsweep.tracking.store import ensure_experiment
from featsweep.tracking.run import JOURNAL


def _existing_run(client, run_id: Optional[str]):
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except Exception:
        return None


def upload(folder: Path, uri: Optional[str] = None) -> str:
    """Log the journal and files of one job folder; returns the run id that holds them."""
    journal_path = folder / JOURNAL
    if not journal_path.exists():
        raise FeatsweepError(f"{folder} has no {JOURNAL}: give a job's output folder (the one named in the error message).")
    journal = json.loads(journal_path.read_text())
    uri = uri or journal["uri"]
    client, experiment_id = ensure_experiment(uri, journal["experiment"], str(Path.cwd() / "mlruns"))
    run = _existing_run(client, journal.get("run_id"))
    tags = dict(journal["tags"])
    if journal.get("parent") and _existing_run(client, journal["parent"]) is None:
        tags.pop("mlflow.parentRunId", None)  # another store: the sweep's parent is not there
    tags["featsweep.uploaded_from"] = str(folder.resolve())
    if run is None:
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        params = [Param(k[:250], v[:6000]) for k, v in journal["params"].items()]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start : start + 100])
    else:
        run_id = run.info.run_id
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in journal["metrics"].items()]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])
    missing = []
    for local, artifact_folder in journal["artifacts"]:
        if Path(local).exists():
            client.log_artifact(run_id, local, artifact_folder)
        else:
            missing.append(local)
    client.set_terminated(run_id, journal["status"])
    journal.update({"logged": True, "uploaded_as": run_id, "uploaded_to": uri})
    journal_path.write_text(json.dumps(journal, indent=1))
    if missing:
        print(f"featsweep.tracking.upload: {len(missing)} artifact file(s) were gone: {', '.join(missing[:5])}", file=sys.stderr)
    return run_id


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featsweep.tracking.upload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="job output folder(s) holding featsweep_run.json")
    parser.add_argument("--uri", default=None, help="tracking URI (default: the store the job used)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    status = 0
    for folder in args.folders:
        try:
            run_id = upload(folder, args.uri)
        except FeatsweepError as err:
            print(f"featsweep.tracking.upload: error: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"Logged {folder} as run {run_id}.")
    return status


if __name__ == "__main__":
    sys.exit(main())
