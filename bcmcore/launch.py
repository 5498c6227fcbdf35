"""`bcm launch`: run any `bcm` command as one (multi-task, multi-node) job through submitit, and
wait for it.

The executor comes from a launcher YAML file (site settings live in cluster/, never in the science
config):
  slurm  AutoExecutor on Slurm: nodes x tasks_per_node tasks (one per GPU), requeued on
         preemption / timeout
  local  LocalExecutor: tasks_per_node processes on this machine (CPU DDP with gloo), same requeue
         logic
  debug  in this process (one task; for tests and breakpoints)
Each task exports the torch.distributed variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK)
and runs `bcm <command>`; `bcmcore.dist.init` picks them up. On preemption or timeout the task's
checkpoint() only resubmits the same command: the training loop's own checkpoints carry the state,
and a rerun resumes. A Slurm job's id is kept in the job folder until the job ends: if the waiting
process dies (login session closed), the same `bcm launch` waits for that job again instead of
submitting a second one.
"""

import dataclasses
import json
import os
import signal
import sys
import threading
import time
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import submitit

from bcmcore import runlock
from bcmcore.config import ConfigError, UserError, from_dict
from bcmcore.util import atomic_write_text

ACTIVE = (
    "active-job.json"  # in the job dir: the Slurm job this command is waiting for, until it ends
)
LIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "STAGE_OUT",
}


def _key(default, minimum=None):
    """A launcher key that `bcm launch --<key>` and the workflow's per-stage settings may set."""
    return field(default=default, metadata={"launch_key": True, "minimum": minimum})


@dataclass(frozen=True)
class LauncherConfig:
    """Launcher YAML (docs/interfaces.md): where and how big a job is. The one table of launcher
    keys: a field made with _key() is also a `bcm launch` flag and a per-stage workflow setting."""

    executor: Literal["slurm", "local", "debug"] = _key("local")
    nodes: int = _key(1, minimum=1)
    # None: gpus_per_node, or 1 without GPUs (one process per GPU)
    tasks_per_node: int | None = _key(None, minimum=1)
    gpus_per_node: int = _key(0, minimum=0)
    cpus_per_task: int | None = _key(None, minimum=1)
    mem_gb: float | None = _key(None, minimum=0)  # per node; None or 0 = the cluster's default
    time_min: int = _key(24 * 60, minimum=1)  # wall-clock limit; at the limit the job requeues
    partition: str | None = _key(None)
    account: str | None = _key(None)
    qos: str | None = _key(None)
    constraint: str | None = _key(None)
    sbatch_extra: dict = field(
        default_factory=dict
    )  # more #SBATCH options, e.g. {"exclusive": true}
    setup: tuple[str, ...] = ()  # shell lines before the tasks start (module load ..., source ...)
    max_num_timeout: int = 3  # requeues after a timeout (preemptions are not counted)
    signal_delay_s: int = 120  # USR2 this long before the time limit

    @property
    def num_tasks(self):
        return self.nodes * (self.tasks_per_node or max(self.gpus_per_node, 1))


def _scalar(tp):
    """int | None -> int, Literal[...] -> str: the type a command-line flag parses."""
    if typing.get_origin(tp) is Literal:
        return str
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return _scalar(args[0]) if args else tp


# {key: flag type} of the launcher keys a command line or a workflow stage may override
LAUNCH_KEYS = {
    f.name: _scalar(f.type)
    for f in dataclasses.fields(LauncherConfig)
    if f.metadata.get("launch_key")
}


def load_launcher(path=None, **overrides):
    """LauncherConfig from a YAML file (None: defaults) plus CLI overrides (None values are
    ignored)."""
    from bcmcore.config import load_yaml

    data = {}
    where = "launcher"
    if path is not None:
        path, where = Path(path), str(path)
        if not path.is_file():
            raise UserError(f"{path}: launcher file not found")
        data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of launcher settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = from_dict(LauncherConfig, data, where)
    for f in dataclasses.fields(cfg):
        low, value = f.metadata.get("minimum"), getattr(cfg, f.name)
        if low is not None and value is not None and value < low:
            raise ConfigError(f"{where}: {f.name} must be >= {low}, got {value}")
    if cfg.executor == "debug" and cfg.num_tasks != 1:
        raise ConfigError(
            f"{where}: executor 'debug' runs one task in this process, got {cfg.num_tasks}; "
            f"use executor 'local' for several processes"
        )
    if cfg.executor == "local" and cfg.nodes != 1:
        raise ConfigError(f"{where}: executor 'local' has one node, got nodes {cfg.nodes}")
    return cfg


def make_executor(cfg: LauncherConfig, folder, name="bcm"):
    """The submitit executor for cfg, writing its logs under folder/<job id>/."""
    folder = Path(folder) / "%j"
    tasks = cfg.tasks_per_node or max(cfg.gpus_per_node, 1)
    if cfg.executor == "debug":
        return submitit.DebugExecutor(folder)
    if cfg.executor == "local":
        ex = submitit.LocalExecutor(folder, max_num_timeout=cfg.max_num_timeout)
        ex.update_parameters(
            timeout_min=cfg.time_min,
            tasks_per_node=tasks,
            gpus_per_node=cfg.gpus_per_node,
            signal_delay_s=cfg.signal_delay_s,
            setup=list(cfg.setup),
        )
        return ex
    ex = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=cfg.max_num_timeout
    )
    params = dict(
        name=name,
        nodes=cfg.nodes,
        tasks_per_node=tasks,
        timeout_min=cfg.time_min,
        gpus_per_node=cfg.gpus_per_node or None,
        cpus_per_task=cfg.cpus_per_task or None,
        mem_gb=cfg.mem_gb
        or None,  # 0 = the cluster's default (sbatch --mem=0 would take a whole node)
        slurm_signal_delay_s=cfg.signal_delay_s,
    )
    for key in ("partition", "account", "qos", "constraint"):
        params[f"slurm_{key}"] = getattr(cfg, key)
    if cfg.sbatch_extra:
        params["slurm_additional_parameters"] = dict(cfg.sbatch_extra)
    if cfg.setup:
        params["slurm_setup"] = list(cfg.setup)
    ex.update_parameters(**params)  # None values are ignored
    return ex


class BcmTask(submitit.helpers.Checkpointable):
    """One task of a launched job: `bcm <argv>` in this process. checkpoint() (inherited) resubmits
    the same command and nothing else; resume is the training loop's job."""

    def __call__(self, argv, entry, threads=None):
        env = submitit.JobEnvironment()
        if threads and "OMP_NUM_THREADS" not in os.environ:
            # cpus_per_task is the task's share of the machine: without it torch takes every core,
            # and stages that share a CPU machine (the local profile) would oversubscribe it
            import torch

            os.environ["OMP_NUM_THREADS"] = str(threads)  # DataLoader workers, subprocesses
            torch.set_num_threads(threads)
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        try:
            return entry(list(argv))
        except Exception:  # (never SystemExit: submitit's requeue on preemption exits through it)
            # The debug executor would open pdb on a crash: only useful at a terminal, a hang in a
            # workflow.
            if "SUBMITIT_DEBUG_JOB_ID" not in os.environ or sys.stdin.isatty():
                raise
            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def job_name(argv):
    """Default job name: <dataset>-<experiment>-<command> for a run directory
    results/<dataset>/runs/<experiment> (what the workflow names its jobs), else bcm-<command>."""
    if "--run-dir" in argv[:-1]:
        parts = Path(argv[argv.index("--run-dir") + 1]).parts
        if len(parts) >= 3 and parts[-2] == "runs":
            return f"{parts[-3]}-{parts[-1]}-{argv[0]}"
    return f"bcm-{argv[0]}"


def submit(argv, cfg: LauncherConfig, folder, name, entry):
    """Submit `entry(argv)` as one job (entry = bcmcore.cli.main: `bcm <argv>`); returns the Job."""
    ex = make_executor(cfg, folder, name or job_name(argv))
    # A shell's background job (nohup snakemake ... &) starts with SIGINT ignored, and children
    # inherit that. submitit's local controller would then survive cancel() (a SIGINT): no deadline
    # or Ctrl-C could stop it.
    if (
        signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with (
        submitit.helpers.clean_env()
    ):  # nested in a Slurm job (Snakemake's): do not inherit its variables
        return ex.submit(BcmTask(), list(argv), entry, cfg.cpus_per_task)


def _remember(folder, job, argv, num_tasks):
    atomic_write_text(
        Path(folder) / ACTIVE,
        json.dumps({"job_id": job.job_id, "argv": list(argv), "num_tasks": num_tasks}) + "\n",
    )


def _forget(folder, job):
    path = Path(folder) / ACTIVE
    try:
        if json.loads(path.read_text()).get("job_id") == job.job_id:
            path.unlink()
    except (OSError, ValueError):
        pass


def find_running(folder, argv, cfg):
    """The Slurm job that an earlier `bcm launch` of this same command submitted and never saw end
    (its Snakemake died with the login session), if Slurm still queues or runs it: wait for that job
    instead of submitting a second one that would train into the same run directory."""
    path = Path(folder) / ACTIVE
    if cfg.executor != "slurm" or not path.is_file():
        return None, None
    try:
        rec = json.loads(path.read_text())
        if rec["argv"] != list(argv):
            return None, None
        job = submitit.SlurmJob(
            Path(folder) / "%j", str(rec["job_id"]), tasks=tuple(range(rec["num_tasks"]))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    state = (job.get_info(mode="force").get("State") or "UNKNOWN").split()[0]  # sacct
    return (job if state in LIVE else None), state


class _Tail:
    """Print what a growing log file gained since the last call."""

    def __init__(self, path, out):
        self.path, self.out, self.pos = Path(path), out, 0

    def __call__(self):
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        if data:
            self.pos += len(data)
            self.out.write(data.decode(errors="replace"))
            self.out.flush()


def wait(job, deadline_s=None, poll_s=1.0, stream=True):
    """Block until the job ends, streaming task 0's stdout/stderr. Returns the exit code: the
    largest of the tasks' `bcm` exit codes, 1 if a task raised or vanished, 124 past the deadline
    (the job is cancelled)."""
    if isinstance(job, submitit.local.debug.DebugJob):
        return _outcome(job)  # runs here, now, printing directly
    paths = job.task(0).paths if job.num_tasks > 1 else job.paths
    tails = [_Tail(paths.stdout, sys.stdout), _Tail(paths.stderr, sys.stderr)] if stream else []
    start = time.time()
    while not job.done():
        for tail in tails:
            tail()
        if deadline_s is not None and time.time() - start > deadline_s:
            job.cancel(check=False)
            print(
                f"bcm launch: job {job.job_id} still running after {deadline_s:.0f} s: cancelled",
                file=sys.stderr,
                flush=True,
            )
            return 124
        time.sleep(poll_s)
    for tail in tails:
        tail()
    return _outcome(job)


def _outcome(job):
    try:
        rcs = job.results()
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
        lines = str(e).splitlines()
        print(
            "bcm launch: job {} failed:\n{}".format(job.job_id, "\n".join(lines[-40:])),
            file=sys.stderr,
            flush=True,
        )
        return 1
    rc = max(int(rc or 0) for rc in rcs)
    if rc:
        print(
            f"bcm launch: job {job.job_id} failed with exit code {rc}", file=sys.stderr, flush=True
        )
    return rc


def _default_job_dir(argv):
    if "--run-dir" in argv[:-1]:
        return Path(argv[argv.index("--run-dir") + 1]) / "submitit"
    return Path("submitit-logs")


def run(command, entry, launcher=None, job_dir=None, deadline_min=None, name=None, **overrides):
    """Run `bcm <command>` as one job and wait: the `bcm launch` command without its flags.

    entry: the function a task calls with the command's argv (bcmcore.cli.main); overrides: keys of
    LAUNCH_KEYS replacing the launcher file's values (None values are ignored). Returns the exit
    code."""
    if not command:
        raise UserError("missing the bcm command after '--' (e.g. -- train --run-dir DIR)")
    if command[0] == "launch":
        raise UserError("the launched command cannot itself be 'launch'")
    cfg = load_launcher(launcher, **overrides)
    folder = Path(job_dir) if job_dir else _default_job_dir(command)
    job, state = find_running(folder, command, cfg)
    if job is None and command[0] == "train" and "--run-dir" in command[:-1]:
        runlock.check(command[command.index("--run-dir") + 1])  # a live trainer: start no second
    if job is not None:
        print(
            f"bcm launch: slurm job {job.job_id} of this command, submitted by an earlier bcm "
            "launch, is "
            f"{state}: waiting for it instead of submitting another",
            file=sys.stderr,
            flush=True,
        )
    else:
        job = submit(command, cfg, folder, name, entry)
        if cfg.executor == "slurm":
            _remember(folder, job, command, cfg.num_tasks)
        print(
            f"bcm launch: {cfg.executor} job {job.job_id} ({cfg.num_tasks} task(s)): bcm "
            f"{' '.join(command)}; "
            f"logs in {folder}",
            file=sys.stderr,
            flush=True,
        )
    # Snakemake stops a rule with SIGTERM: take the job down with us (the old handler is put back:
    # a caller's process, a test's say, must not keep one that raises in its later work).
    old_term = signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return wait(job, None if deadline_min is None else deadline_min * 60)
    except KeyboardInterrupt:
        job.cancel(check=False)
        print(f"bcm launch: interrupted; job {job.job_id} cancelled", file=sys.stderr, flush=True)
        return 130
    finally:  # the job has ended or is cancelled (a SIGKILL never gets here: the record stays)
        signal.signal(signal.SIGTERM, old_term)
        _forget(folder, job)
