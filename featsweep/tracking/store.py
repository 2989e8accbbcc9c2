"""Opening the MLflow store safely: one lock around its creation, fast failure on a dead server, clear errors.

* **Creation under a lock.** ``MlflowClient(sqlite:///...)`` builds the schema (alembic migrations) the
  first time it meets a file. Two processes doing that at once corrupt it ("duplicate column name"), so
  the client is built, and the experiment created, while a ``FileLock`` next to the database is held.
  Every featsweep entry point (single run, every launcher's jobs, the sweep callback, compare, rerun,
  upload) opens the store through ``client_for`` / ``ensure_experiment``.
* **A server that goes away fails fast.** For HTTP stores the MLflow client's own retries (7 retries,
  120 s timeout by default: minutes per call) are cut to a few seconds, unless the user set them.
* **PostgreSQL stores** (``postgresql://user:password@host:port/database``, ``tracking=postgres``) are probed
  first, so a missing driver (the ``postgres`` extra), a server that does not answer and a database that does
  not exist are each one line naming the fix.
* **No password is logged.** ``mask`` replaces the password of every ``scheme://user:password@`` in a text
  with ``***``; params, tags, the run description, log lines, errors and the printed UI command go through it.
* **Dead runs are closed.** ``ensure_experiment`` also closes runs left RUNNING by a process that no
  longer exists (see ``featsweep.tracking.liveness``).
"""

from __future__ import annotations

import importlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import requests
from filelock import FileLock
from mlflow.tracking import MlflowClient

from featsweep.errors import FeatsweepError
from featsweep.tracking.liveness import close_dead_runs as reap

# MLflow's HTTP client settings for a server that dies: worst case about 3 x 10 s per call instead of
# 7 retries with exponential back-off and a 120 s timeout. Users may override them in the environment.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
}
LOCK_NAME = ".featsweep_mlflow.lock"
# MLflow 3's UI opens an experiment on its GenAI overview ("Traces") unless the experiment says it holds model
# runs: this tag makes it open on the runs table ("Model training").
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(?=@)")
URI_ENV = "FEATSWEEP_TRACKING_URI"  # where tracking=postgres reads the store's address (with its password)


def mask(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    return CREDENTIALS.sub(r"\1***", text)


def is_postgres(uri: str) -> bool:
    return urlparse(uri).scheme.split("+")[0] == "postgresql"


def check_database(uri: str) -> None:
    """A PostgreSQL store: the driver is installed, the server answers, the database exists (else one line)."""
    if not is_postgres(uri):
        return
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    driver = url.get_dialect().driver  # SQLAlchemy's choice: psycopg (version 3) for a plain postgresql://
    try:
        module = importlib.import_module(driver)
    except ImportError:
        raise FeatsweepError(f"The PostgreSQL driver '{driver}' is not installed. Install featsweep's postgres extra: "
                             "pip install 'featsweep[postgres]' (psycopg, and psycopg2-binary for postgresql+psycopg2://).") from None
    if driver not in ("psycopg", "psycopg2"):
        return  # another driver: MLflow's own error will say what is wrong
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    settings = {"host": url.host, "port": url.port, "user": url.username, "password": url.password,
                "dbname": url.database, "connect_timeout": 5, **dict(url.query)}
    try:
        module.connect(**{k: v for k, v in settings.items() if v is not None}).close()
    except module.OperationalError as err:
        text = " ".join(str(err).split())
        if f'database "{url.database}" does not exist' in text:
            raise FeatsweepError(
                f"The database '{url.database}' does not exist on the PostgreSQL server at {where}. Create it "
                f"(createdb -h {url.host} -p {url.port or 5432} -U {url.username} {url.database}), or fix the database "
                f"name in tracking.uri ({mask(uri)}).") from None
        if "authentication failed" in text or "no password supplied" in text:
            raise FeatsweepError(f"The PostgreSQL server at {where} refused user '{url.username}' (authentication "
                                 f"failed). Fix the user or password in tracking.uri (tracking=postgres: ${URI_ENV}).") from None
        raise FeatsweepError(
            f"The PostgreSQL server at {where} cannot be reached ({mask(text)[:200]}). Start it, or fix tracking.uri "
            f"(tracking=postgres reads it from ${URI_ENV}): {mask(uri)}") from None


def is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def store_lock(uri: str) -> FileLock:
    """The lock that serialises creating the store and experiments (one per SQLite file, else one per host)."""
    path = sqlite_path(uri)
    folder = path.parent if path is not None else Path(tempfile.gettempdir())
    return FileLock(str(folder / LOCK_NAME), timeout=300)


def server_alive(uri: str, timeout: float = 5) -> bool:
    """Whether an HTTP tracking server answers its health check (always True for other stores)."""
    if not is_http(uri):
        return True
    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def check_reachable(uri: str) -> None:
    """A tracking server that is down, or an address that is not MLflow, gives one clear error."""
    if not is_http(uri):
        return
    for key, value in HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=5)
    except requests.RequestException:
        raise FeatsweepError(
            f"The MLflow tracking server at {mask(uri)} cannot be reached. Start it (see docs/sweeps.md, 'A tracking server'), "
            "fix tracking.uri, or use the local store with tracking=local."
        ) from None
    if response.status_code != 200:
        raise FeatsweepError(
            f"{mask(uri)} answers HTTP but is not an MLflow tracking server (GET /health gave {response.status_code}). "
            "Fix tracking.uri (the address `mlflow server` prints), or use tracking=local."
        )


def check_writable_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FeatsweepError(f"Cannot create the MLflow store folder {path.parent}: {err.strerror}. "
                             "Set tracking.uri to a writable place.") from None
    if not os.access(path.parent, os.W_OK):
        raise FeatsweepError(f"The MLflow store folder {path.parent} is not writable. Set tracking.uri to a writable place.")


def _open(uri: str) -> MlflowClient:
    try:
        client = MlflowClient(tracking_uri=uri)
        if sqlite_path(uri) is not None:
            client.search_experiments(max_results=1)  # touch the database: a corrupt file fails here
        return client
    except FeatsweepError:
        raise
    except Exception as err:
        path = sqlite_path(uri)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if path is not None:
            raise FeatsweepError(
                f"The MLflow store {path} cannot be opened ({first}). If it is not an MLflow SQLite database or is "
                "corrupt, move it aside (a new one is created) or set tracking.uri to another store."
            ) from None
        raise FeatsweepError(f"The MLflow store {mask(uri)} cannot be opened ({mask(first)}). Check tracking.uri.") from None


def client_for(uri: str) -> MlflowClient:
    """An MLflow client whose store exists: created (schema and all) under the store's lock."""
    check_reachable(uri)
    check_database(uri)
    check_writable_sqlite(uri)
    if sqlite_path(uri) is None:
        return _open(uri)
    with store_lock(uri):
        return _open(uri)


def ensure_experiment(uri: str, name: str, artifact_root: str, close_dead_runs: bool = True) -> tuple[MlflowClient, str]:
    """Open the store and create the experiment if needed, both under the lock; then close the runs of
    this experiment that a dead process left RUNNING. Returns (client, experiment id)."""
    check_reachable(uri)
    check_database(uri)
    check_writable_sqlite(uri)
    with store_lock(uri):
        client = _open(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = Path(artifact_root).resolve().as_uri() if "://" not in artifact_root else artifact_root
            if is_http(uri):
                location = None  # let the server choose (it may proxy artifacts)
            experiment_id = client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        else:
            experiment_id = experiment.experiment_id
            for key, value in EXPERIMENT_TAGS.items():
                if key not in experiment.tags:  # a store made by older featsweep: a user's own choice is kept
                    client.set_experiment_tag(experiment_id, key, value)
    if close_dead_runs:
        reap(client, experiment_id)
    return client, experiment_id
