"""One trainer per run directory: `RUN_DIR/run.lock`, taken atomically, naming its holder; stale
ones taken over.

Two trainers in one directory interleave their logs and checkpoints (and the later config can end up
next to the earlier one's weights), so `bcm train` holds this lock for the whole run and `bcm
launch` refuses to start a trainer into a directory whose lock is live.

Atomic on a shared cluster filesystem: the holder's record (host, PID, process start time, Slurm job
id) is written to a private file and hard-linked to `run.lock`; link(2) fails if the name exists, on
NFS too. A holder refreshes the lock's mtime every HEARTBEAT_S seconds. A lock is stale when its
process is gone (same host: the PID is dead or was reused), its Slurm job has ended or was requeued
(we are its next run), or (another host) its heartbeat is older than STALE_S; a stale lock is
renamed away (one taker wins the rename) and taken."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from bcmcore.config import UserError

NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = (
    600.0  # no heartbeat for this long (clock skew between hosts included): the holder is gone
)


class RunLocked(UserError):
    """Another live process holds the run directory."""


def _start_time(pid):
    """The process's start time in clock ticks since boot (/proc, Linux), to tell a reused PID
    apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _job_token():
    """Shared by every rank of one distributed job (non-rank-0 ranks check the lock is their job's).
    Shared by every rank of one distributed job (non-rank-0 ranks check the lock is their job's)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        keys = (
            "SLURM_JOB_ID",
            "SLURM_RESTART_COUNT",
            "TORCHELASTIC_RUN_ID",
            "MASTER_ADDR",
            "MASTER_PORT",
        )
        return "job:" + "/".join(os.environ.get(k, "") for k in keys)
    return f"proc:{uuid.uuid4().hex}"


def _record(text):
    """A lock record: a JSON object; anything else (a list, a number, other JSON) is unreadable."""
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def read_record(path):
    try:
        return _record(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read(run_dir):
    """The holder's record of RUN_DIR/run.lock, or None when unlocked (an unreadable lock counts as
    held)."""
    path = Path(run_dir) / NAME
    try:
        holder = _record(path.read_text())
        holder["age_s"] = time.time() - path.stat().st_mtime
        return holder
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"host": "?", "pid": "?", "age_s": 0.0, "unreadable": True}


def describe(holder):
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return (
        f"host {holder.get('host')} pid {holder.get('pid')}{job}, "
        f"heartbeat {holder.get('age_s', 0):.0f} s ago"
    )


def _slurm_job_ended(job_id):
    if not job_id or not shutil.which("squeue"):
        return False
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and not out.stdout.strip()  # unknown to squeue: finished


def is_stale(holder):
    if holder is None:
        return True
    if holder.get("unreadable"):
        return holder["age_s"] > STALE_S
    job = holder.get("slurm_job_id")
    if job and job == os.environ.get("SLURM_JOB_ID") and holder.get("token") != _job_token():
        return True  # an earlier run of this very Slurm job (requeued after preemption / timeout)
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, TypeError, ValueError):
            pass
        start = holder.get("pid_start")
        return start is not None and _start_time(pid) not in (None, start)
    if _slurm_job_ended(holder.get("slurm_job_id")):
        return True
    return holder["age_s"] > STALE_S


def check(run_dir):
    """Raise RunLocked when a live process holds RUN_DIR (what `bcm launch` asks before starting).
    Raise RunLocked when a live process holds RUN_DIR (what `bcm launch` asks before starting)."""
    holder = read(run_dir)
    if holder is not None and not is_stale(holder):
        raise RunLocked(
            f"{Path(run_dir) / NAME}: run directory in use by {describe(holder)}; "
            f"wait for it, or stop that process (the lock is taken over once it is gone)"
        )


class RunLock:
    """The held lock: heartbeat thread while held; release() removes it only if it is still ours."""

    def __init__(self, run_dir, token):
        self.path, self.token = Path(run_dir) / NAME, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="run-lock")
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self):
        self._stop.set()
        try:
            if read_record(self.path).get("token") == self.token:
                self.path.unlink()
        except OSError:
            pass


def acquire(run_dir):
    """Take RUN_DIR/run.lock for this process, or raise RunLocked naming the live holder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path, token = run_dir / NAME, _job_token()
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _start_time(os.getpid()),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "token": token,
    }
    mine = run_dir / f".{NAME}.{uuid.uuid4().hex}"
    mine.write_text(json.dumps(record) + "\n")
    try:
        for _ in range(5):
            try:
                os.link(mine, path)
                return RunLock(run_dir, token)
            except FileExistsError:
                pass
            holder = read(run_dir)
            if holder is not None and not is_stale(holder):
                check(run_dir)  # raises, naming the holder
            # stale: move it aside; of several takers only one rename succeeds, the others retry
            aside = run_dir / f".{NAME}.stale.{uuid.uuid4().hex}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            moved = read_record(aside)
            if holder is not None and moved.get("token") != holder.get("token"):
                with contextlib.suppress(
                    FileExistsError
                ):  # a fresh lock taken meanwhile: put it back
                    os.link(aside, path)
            aside.unlink(missing_ok=True)
        raise RunLocked(f"{path}: could not take the run lock (contended); retry")
    finally:
        mine.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(run_dir, main=True, sync=None):
    """Hold the run lock for a (distributed) training run: rank 0 takes it; `sync` (a barrier) lets
    the
    other ranks check that the lock is their own job's, so a refused job stops on every rank."""
    lock, error = None, None
    if main:
        try:
            lock = acquire(run_dir)
        except RunLocked as e:
            error = e
    if sync is not None:
        sync()
    try:
        if error is not None:
            raise error
        if not main:
            holder = read(run_dir) or {}
            if holder.get("token") != _job_token():
                check(run_dir)
                raise RunLocked(f"{Path(run_dir) / NAME}: the run lock was not taken by rank 0")
        yield lock
    finally:
        if lock is not None:
            lock.release()
