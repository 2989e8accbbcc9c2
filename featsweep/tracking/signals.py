"""Signals that end a job: SIGTERM (what SLURM and most schedulers send at a time limit or pre-emption)
is turned into ``Terminated``, a ``SystemExit`` with status 128 + signal number (143), so that every
``with``/``finally`` block runs: the job's run ends KILLED with the tag ``featsweep.signal=SIGTERM``,
the sweep's parent run is closed, and the process exits non-zero without a traceback. Ctrl-C
(``KeyboardInterrupt``) ends the run FAILED with ``featsweep.signal=SIGINT`` and exit status 130.

A signal that arrives while the main thread is inside the tracking store (SQLAlchemy, sqlite3, MLflow's
store code) is delivered again a moment later, after that call returns: raising in the middle of a
write leaves the SQLite database locked, and the closing writes would then fail.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SIGNAL_TAG = "featsweep.signal"
received: str | None = None  # the name of the signal that is ending this process, once one arrived
STORE_MODULES = ("sqlalchemy", "sqlite3", "mlflow.store")
REDELIVER_AFTER_S = 0.05
DEFER_AT_MOST_S = 10.0  # a store call that hangs longer than this is interrupted anyway
_deferred_since: float | None = None


class Terminated(SystemExit):
    """Raised in the main thread when the process receives SIGTERM (or SIGHUP)."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def inside_store(frame) -> bool:
    """Whether the interrupted code is, at any depth, a call into the tracking store."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(STORE_MODULES):
            return True
        frame = frame.f_back
    return False


def _raise_terminated(signum, frame) -> None:
    global received, _deferred_since
    received = signal.Signals(signum).name
    now = time.monotonic()
    if inside_store(frame) and now - (_deferred_since or now) < DEFER_AT_MOST_S:
        _deferred_since = _deferred_since or now
        again = threading.Timer(REDELIVER_AFTER_S, os.kill, (os.getpid(), signum))
        again.daemon = True
        again.start()
        return
    # A second signal ends the process at once, except in a scheduler's job: Slurm signals every process of the
    # step (slurmstepd, then srun forwards it), and its SIGKILL after KillWait ends a job that does not close.
    signal.signal(signum, signal.SIG_IGN if in_scheduled_process() else signal.SIG_DFL)
    print(f"featsweep: received {signal.Signals(signum).name}; closing the run(s) and stopping.", file=sys.stderr, flush=True)
    raise Terminated(signum)


def in_scheduled_process() -> bool:
    """Whether this process is one job that a scheduler started on its own (submitit: Slurm or local)."""
    return "SUBMITIT_EXECUTOR" in os.environ


def _time_limit_near(signum, frame) -> None:
    print(f"featsweep: Slurm sent {signal.Signals(signum).name}: the job's time limit is near "
          "(hydra.launcher.signal_delay_s). The run goes on; if the limit comes first, Slurm's SIGTERM ends it KILLED "
          "and the same command resumes the sweep.", file=sys.stderr, flush=True)


def install() -> None:
    """Turn SIGTERM and SIGHUP into ``Terminated`` (only possible in the main thread; elsewhere a no-op).
    In a Slurm job started by submitit, its warning signal before the time limit (SIGUSR2) is only logged:
    submitit's own handler would raise an error in the middle of a stage, 2 minutes early by default, and end
    the run FAILED with a traceback; the limit itself ends the run KILLED through SIGTERM."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(signum, _raise_terminated)
        except (ValueError, OSError):  # not the main thread (some launchers' workers)
            return
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        warning = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        signal.signal(warning, _time_limit_near)


def interruption(exc: BaseException | None) -> tuple[str, str] | None:
    """(status, signal name) when ``exc`` is an interruption by a signal, else None."""
    if isinstance(exc, Terminated):
        return "KILLED", exc.name
    if isinstance(exc, KeyboardInterrupt):
        return "FAILED", "SIGINT"
    if exc is not None and received is not None:  # native code turned the handler's Terminated into its own error
        return "KILLED", received
    return None


def raise_if_received(err: BaseException) -> None:
    """A job's error after a signal arrived is that signal's doing (safetensors, for one, turns the
    handler's ``Terminated`` into a ``ValueError``): end the process as the signal asks."""
    if received is not None:
        raise Terminated(signal.Signals[received]) from err
