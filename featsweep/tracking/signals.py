"""Signals that end a job: SIGTERM (what SLURM and most schedulers send at a time limit or pre-emption)
is turned into ``Terminated``, a ``SystemExit`` with status 128 + signal number (143), so that every
``with``/``finally`` block runs: the job's run ends KILLED with the tag ``featsweep.signal=SIGTERM``,
the sweep's parent run is closed, and the process exits non-zero without a traceback. Ctrl-C
(``KeyboardInterrupt``) ends the run FAILED with ``featsweep.signal=SIGINT`` and exit status 130.
"""

from __future__ import annotations

import signal
import sys

SIGNAL_TAG = "featsweep.signal"
received: str | None = None  # the name of the signal that is ending this process, once one arrived


class Terminated(SystemExit):
    """Raised in the main thread when the process receives SIGTERM (or SIGHUP)."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def _raise_terminated(signum, frame) -> None:
    global received
    received = signal.Signals(signum).name
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    print(f"featsweep: received {signal.Signals(signum).name}; closing the run(s) and stopping.", file=sys.stderr, flush=True)
    raise Terminated(signum)


def install() -> None:
    """Turn SIGTERM and SIGHUP into ``Terminated`` (only possible in the main thread; elsewhere a no-op)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(signum, _raise_terminated)
        except (ValueError, OSError):  # not the main thread (some launchers' workers)
            return


def interruption(exc: BaseException | None) -> tuple[str, str] | None:
    """(status, signal name) when ``exc`` is an interruption by a signal, else None."""
    if isinstance(exc, Terminated):
        return "KILLED", exc.name
    if isinstance(exc, KeyboardInterrupt):
        return "FAILED", "SIGINT"
    return None
