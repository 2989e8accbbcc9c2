"""Content-addressed cache of expensive stage outputs, shared by the jobs of a sweep.

An entry's key hashes exactly what the output depends on (a config subtree, the model/SAE identity,
upstream keys) plus ``FORMAT_VERSION``, the package version and a digest of the stage's code (the source of
the module of its function and of every featsweep module that module uses, transitively), so after an upgrade
or an edit of the stage's code the stage is recomputed instead of replaying numbers of the old code. Entries are written atomically (temp file, then rename) and
carry a SHA-256 of their payload, so a corrupt or partial entry is detected and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Optional

from featsweep import __version__
from featsweep.errors import FeatsweepError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump whenever a stage output changes shape or meaning: old entries are then never read


def code_digest(function: Callable) -> str:
    """SHA-256 of the source files of ``function``'s module and of every module of the same package that it
    uses (module-level imports, followed transitively); the files are read now, so an edit counts at once."""
    package = function.__module__.split(".")[0]
    sources: dict[str, bytes] = {}
    todo = [function.__module__]
    while todo:
        name = todo.pop()
        module = sys.modules.get(name)
        if name in sources or module is None or not getattr(module, "__file__", None):
            continue
        sources[name] = Path(module.__file__).read_bytes()
        for value in vars(module).values():
            used = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(used, str) and (used == package or used.startswith(package + ".")):
                todo.append(used)
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + hashlib.sha256(sources[name]).digest())
    return digest.hexdigest()[:32]


def cache_key(stage: str, code: Optional[Callable] = None, **parts: Any) -> str:
    """Stable key of a stage output from the JSON of everything it depends on; ``code``: the stage's function,
    whose code digest (and the package version) the key includes."""
    if code is not None:
        parts["code"] = {"featsweep": __version__, "digest": code_digest(code)}
    payload = json.dumps({"stage": stage, "version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class StageCache:
    def __init__(self, directory: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.dir = Path(directory)
        self.status: dict[str, str] = {}  # stage -> hit | miss | off
        if enabled:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                probe = tempfile.NamedTemporaryFile(dir=self.dir, delete=True)
                probe.close()
            except OSError as err:
                raise FeatsweepError(
                    f"The cache directory {self.dir} cannot be written ({err.strerror}). "
                    "Set cache.dir to a writable folder, or cache.enabled=false."
                ) from None

    def _path(self, stage: str, key: str) -> Path:
        return self.dir / stage / f"{key}.pkl"

    def load(self, stage: str, key: str) -> Optional[Any]:
        if not self.enabled:
            return None
        path = self._path(stage, key)
        if not path.exists():
            return None
        try:
            raw = path.read_bytes()
            digest, payload = raw[:64].decode(), raw[65:]
            if hashlib.sha256(payload).hexdigest() != digest:
                raise ValueError("checksum mismatch")
            return pickle.loads(payload)
        except Exception as err:  # corrupt or partial: never trusted, recomputed
            log.warning("Cache entry %s is unreadable (%s); recomputing.", path, err)
            path.unlink(missing_ok=True)
            return None

    def save(self, stage: str, key: str, value: Any) -> None:
        if not self.enabled:
            return
        path = self._path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            os.replace(tmp, path)  # atomic: readers see the old entry or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(self, stage: str, key: str, compute: Callable[[], Any]) -> Any:
        """Return the cached value for (stage, key), computing and storing it on a miss."""
        value = self.load(stage, key)
        if value is not None:
            self.status[stage] = "hit"
            return value
        self.status[stage] = "miss" if self.enabled else "off"
        value = compute()
        self.save(stage, key, value)
        return value
