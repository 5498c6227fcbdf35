"""One trainer per run directory (bcmcore.runlock): a second trainer or `bcm launch` is refused,
naming the holder; stale locks (dead PID, reused PID, old heartbeat elsewhere) are taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import make_run, train_procs

from bcmcore.train import training_loop

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def start_and_wait_for_lock(run):
    """A long trainer in a subprocess, returned once it holds the lock and has trained a step."""
    proc, seen = train_procs(run)[0], []
    for line in proc.stdout:
        seen.append(line)
        if "] step " in line:  # "[timestamp] step k/N ..." (train/monitor.py)
            break
    assert (run / "run.lock").is_file() and proc.poll() is None, "".join(seen)
    return proc


@pytest.mark.timeout(300)
def test_second_trainer_and_launch_into_a_live_run_are_refused(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, total_steps=10**6, status_every=50)
    first = start_and_wait_for_lock(run)
    try:
        holder = json.loads((run / "run.lock").read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = subprocess.run(
            [sys.executable, "-m", "bcmcore", "train", "--run-dir", str(run)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        assert f"run directory in use by host {socket.gethostname()} pid {first.pid}" in (
            second.stderr
        )
        assert "Traceback" not in second.stderr
        launched = subprocess.run(
            [sys.executable, "-m", "bcmcore", "launch", "--executor", "local", "--job-dir"]
            + [str(tmp_path / "jobs"), "--", "train", "--run-dir", str(run)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert launched.returncode == 2, launched.stderr
        assert f"pid {first.pid}" in launched.stderr
        assert not (tmp_path / "jobs").exists()  # nothing was submitted
        assert first.poll() is None  # the live run is untouched
    finally:
        first.kill()
        first.wait()


def test_stale_locks_are_taken_over_and_fresh_foreign_ones_refused(tmp_path, shards):
    from bcmcore import runlock

    run = make_run(tmp_path / "run", shards, total_steps=2)
    lock = run / runlock.NAME
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    for stale in (
        {"host": socket.gethostname(), "pid": int(dead)},  # the process is gone
        {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": 1},  # PID reused
    ):
        lock.write_text(json.dumps(stale))
        training_loop(run)
        assert not lock.exists()  # released after the run
        (run / "network-final.pt").unlink()
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "token": "x"}))
    with pytest.raises(runlock.RunLocked, match="in use by host node-elsewhere pid 1"):
        training_loop(run)
    old = time.time() - runlock.STALE_S - 60  # no heartbeat for longer than STALE_S
    os.utime(lock, (old, old))
    training_loop(run)
    assert (run / "network-final.pt").is_file() and not lock.exists()


def test_lock_heartbeat_and_release_only_our_own(tmp_path, monkeypatch):
    from bcmcore import runlock

    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    lock = runlock.acquire(tmp_path)
    path = tmp_path / runlock.NAME
    os.utime(path, (0, 0))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 5  # refreshed by the heartbeat
    with pytest.raises(runlock.RunLocked, match=f"pid {os.getpid()}"):
        runlock.acquire(tmp_path)  # the same live process counts as a holder too
    path.write_text(json.dumps({"host": "other", "pid": 2, "token": "someone-else"}))
    lock.release()
    assert path.exists()  # not ours any more: left alone
