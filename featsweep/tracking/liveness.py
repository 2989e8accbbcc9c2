"""How a run proves it is alive, and how runs whose process died are closed.

A RUNNING featsweep run (a job's or a sweep's parent) carries three tags:

* ``featsweep.host`` and ``featsweep.pid`` — the machine and process that own it, plus
  ``featsweep.pid_start`` (the process start time from ``/proc``, so a recycled pid is not mistaken
  for the owner);
* ``featsweep.heartbeat`` — Unix time in seconds, refreshed every ``HEARTBEAT_S`` (15) seconds by a
  daemon thread of the owning process. A job whose heartbeat finds its tracking server gone stops at
  once (``featsweep.tracking.run.JobRun``), even in the middle of a long stage.

A RUNNING run is **dead** when either
  1. its host is this host and its process no longer exists (or is another process with the same pid), or
  2. its heartbeat is older than ``STALE_S`` (a process on another machine, or one frozen for minutes).

Every featsweep command that opens an experiment (``featsweep.tracking.store.ensure_experiment``) closes the dead
runs of that experiment: status FAILED, tag ``featsweep.fail_reason`` saying why. So a ``kill -9``, an OOM
kill or a node failure leaves a run RUNNING only until the next command. Runs without these tags (made by
something other than featsweep) are never touched.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
STALE_S = 300.0  # twenty missed heartbeats
HOST_TAG, PID_TAG, PID_START_TAG, HEARTBEAT_TAG = "featsweep.host", "featsweep.pid", "featsweep.pid_start", "featsweep.heartbeat"
REASON_TAG = "featsweep.fail_reason"


def process_start(pid: int) -> Optional[str]:
    """The start time of a process (clock ticks since boot, Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat; the command name may hold spaces


def owner_tags() -> dict[str, str]:
    """The tags that name this process as the owner of a run, with a first heartbeat."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: str(int(time.time()))}
    start = process_start(os.getpid())
    if start:
        tags[PID_START_TAG] = start
    return tags


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def death_reason(tags: dict[str, str], now: Optional[float] = None) -> Optional[str]:
    """Why the run with these tags is dead, or None while it may be alive (see the module docstring)."""
    if PID_TAG not in tags or HEARTBEAT_TAG not in tags:
        return None  # not a featsweep-owned run (or an older one): leave it
    now = time.time() if now is None else now
    host, pid = tags.get(HOST_TAG, ""), int(tags[PID_TAG])
    if host == socket.gethostname():
        if not _process_exists(pid):
            return f"its process {pid} on {host} no longer exists (killed, or crashed hard)"
        recorded, current = tags.get(PID_START_TAG), process_start(pid)
        if recorded and current and recorded != current:
            return f"its process {pid} on {host} no longer exists (the pid now belongs to another process)"
    age = now - float(tags[HEARTBEAT_TAG])
    if age > STALE_S:
        return f"no heartbeat for {age:.0f} s (more than {STALE_S:.0f} s) from process {pid} on {host}"
    return None


def close_dead_runs(client, experiment_id: str) -> list[str]:
    """Close (FAILED, with a reason tag) every RUNNING run of the experiment whose owner is dead."""
    try:
        running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    except Exception as err:  # closing dead runs must never stop the command that uses the store
        log.warning("Could not look for dead runs: %s", err)
        return []
    closed = []
    for run in running:
        reason = death_reason(run.data.tags)
        if reason is None:
            continue
        try:
            client.set_tag(run.info.run_id, REASON_TAG, f"closed by a later featsweep command: {reason}")
            client.set_terminated(run.info.run_id, "FAILED")
        except Exception as err:
            log.warning("Could not close dead run %s: %s", run.info.run_id, err)
            continue
        log.warning("Run %s was left RUNNING and %s: marked FAILED.", run.info.run_id, reason)
        closed.append(run.info.run_id)
    return closed


class Heartbeat:
    """A daemon thread that refreshes a run's heartbeat tag until stopped. After a failed beat it calls
    ``on_failure()``; when that returns True (the store is gone) the heartbeat stops."""

    def __init__(self, client, run_id: str, interval: float = HEARTBEAT_S, on_failure: Optional[Callable[[], bool]] = None):
        self.client, self.run_id, self.interval, self.on_failure = client, run_id, interval, on_failure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"featsweep-heartbeat-{run_id[:8]}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception as err:
                log.debug("Heartbeat of %s failed: %s", self.run_id, err)
                if self.on_failure is not None and not self._stop.is_set() and self.on_failure():
                    return

    def stop(self) -> None:
        self._stop.set()
