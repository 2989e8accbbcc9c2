"""Signals in this process, for real: a SIGTERM that lands inside a store call waits for the call to return."""

from __future__ import annotations

import os
import signal
import time

import pytest
import sqlalchemy

from featsweep.tracking import signals


@pytest.fixture
def handler():
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)}
    signals.install()
    yield
    for signum, old in previous.items():
        signal.signal(signum, old)
    signals.received = None
    signals._deferred_since = None


def test_sigterm_inside_a_store_call_is_raised_after_the_call_returns(handler, tmp_path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'store.db'}")

    def slow_write_step() -> int:  # called by sqlite3 from inside SQLAlchemy's execute
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)  # the handler runs here and, the frame being inside the store, defers the signal
        return 7

    sqlalchemy.event.listen(engine, "connect", lambda conn, _: conn.create_function("step", 0, slow_write_step))
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("create table t (x int)"))
        conn.execute(sqlalchemy.text("insert into t values (step())"))
    with pytest.raises(signals.Terminated) as raised:
        time.sleep(2)  # outside the store the redelivered signal ends the process
    assert raised.value.code == 143 and signals.received == "SIGTERM"
    with engine.connect() as conn:  # the write committed and the database is not left locked
        assert conn.execute(sqlalchemy.text("select x from t")).scalar() == 7


def test_sigterm_outside_the_store_is_raised_at_once(handler):
    started = time.monotonic()
    with pytest.raises(signals.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
    assert time.monotonic() - started < 1.5


def test_an_error_after_a_signal_counts_as_the_signal(handler):
    assert signals.interruption(ValueError("from native code")) is None
    signals.received = "SIGTERM"
    assert signals.interruption(ValueError("from native code")) == ("KILLED", "SIGTERM")
    with pytest.raises(signals.Terminated) as raised:
        signals.raise_if_received(ValueError("from native code"))
    assert raised.value.code == 143


@pytest.fixture
def slurm_job(monkeypatch):
    """This process as a job that submitit started on Slurm (it sets SUBMITIT_EXECUTOR in the job's script)."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")


def test_in_a_slurm_job_the_warning_signal_is_logged_and_the_run_goes_on(slurm_job, handler, capsys):
    os.kill(os.getpid(), signal.SIGUSR2)  # submitit's default: sent signal_delay_s before the time limit
    time.sleep(0.2)
    assert signals.received is None
    assert "Slurm sent SIGUSR2: the job's time limit is near" in capsys.readouterr().err


def test_in_a_slurm_job_a_second_sigterm_does_not_cut_the_closing_short(slurm_job, handler):
    with pytest.raises(signals.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
    os.kill(os.getpid(), signal.SIGTERM)  # srun forwards the time limit's SIGTERM again while the run closes
    time.sleep(0.2)  # still alive: the closing writes can finish
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_at_a_terminal_a_second_sigterm_ends_the_process_at_once(handler, monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    with pytest.raises(signals.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
