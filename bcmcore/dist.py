"""torch.distributed from the environment (torchrun, submitit via launch.py's export, or plain
Slurm), and every collective the project makes: nothing outside this module calls torch.distributed.

One process per GPU. The CUDA device comes from LOCAL_RANK and is used only when CUDA really works
(a Slurm node may set CUDA_VISIBLE_DEVICES without a usable GPU). Backend: nccl on GPU, gloo on CPU.
Rank 0 writes files; every rank computes.

The device rule lives here and only here: a collective runs on `comm_device()`, the rank's GPU under
nccl (whose backend takes CUDA tensors only) and the CPU under gloo. Each helper moves its tensors
there and the results back, so callers hand over tensors wherever they live (CPU scalars, CUDA
gradients). One nccl group rather than "cpu:gloo,cuda:nccl": the few scalars per step cost one tiny
copy, while a second (gloo) rendezvous over the cluster network is one more thing to misconfigure
(interface choice, firewalls) for no speed gain.
"""

import datetime
import os
import subprocess
import sys

import torch
import torch.distributed as dist

_STATE = {"rank": 0, "world_size": 1, "local_rank": 0, "device": None, "owned": False}


def _slurm_env():
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from a multi-task `srun` step (no torchrun/submitit)."""
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if "SLURM_PROCID" not in os.environ or ntasks <= 1 or "SLURM_STEP_ID" not in os.environ:
        return
    os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
    os.environ.setdefault("WORLD_SIZE", str(ntasks))
    os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get(
            "SLURM_JOB_NODELIST", "localhost"
        )
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
            ).stdout
            os.environ["MASTER_ADDR"] = out.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            os.environ["MASTER_ADDR"] = nodes.split(",")[0]
    # Same port on every task, derived from the job id (as submitit does).
    os.environ.setdefault(
        "MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 40000)
    )


def free_port():
    """A free TCP port on this host: where processes started here meet (benchmarks, tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_env(rank, world, port):
    """torchrun's variables for rank `rank` of `world` processes on this host, meeting at `port`."""
    return dict(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


GROUP_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
RENDEZVOUS_ENV = "BCM_RENDEZVOUS_TIMEOUT"  # seconds the ranks wait for each other at start-up
RENDEZVOUS_DEFAULT_S = 300


def rendezvous_timeout():
    """Seconds to wait for the other ranks at start-up ($BCM_RENDEZVOUS_TIMEOUT, default 300)."""
    from bcmcore.config import UserError

    text = os.environ.get(RENDEZVOUS_ENV, str(RENDEZVOUS_DEFAULT_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e7:
        raise UserError(f"{RENDEZVOUS_ENV}: expected a positive number of seconds, got {text!r}")
    return value


def _group_source():
    """Which variables made this a multi-process run (what the user must unset if it is stray)."""
    names = [k for k in GROUP_VARS if k in os.environ]
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        names += ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID"]
    return ", ".join(f"{k}={os.environ[k]}" for k in names)


def _wait_for_port(host, port, seconds):
    """Return once host:port accepts a connection; TimeoutError after `seconds`."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nothing listens at {host}:{port} ({e.strerror or e})"
                ) from None
            time.sleep(0.5)


def _rendezvous(backend, r, ws, dev, use_cuda, timeout_min):
    """init_process_group with a bounded start-up: the TCP store waits at most
    rendezvous_timeout() for every rank (a stray WORLD_SIZE must not hang silently for the
    collective timeout), then collectives get their own `timeout_min`."""
    from bcmcore.config import UserError

    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise UserError(
                f"WORLD_SIZE={ws} but {key} is not set (variables: {_group_source()}); launch "
                "with torchrun, srun or bcm launch, or unset WORLD_SIZE for one process"
            )
    wait = rendezvous_timeout()
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    print(
        f"[dist] rank {r} of {ws} ({backend}) from {_group_source()}: waiting up to {wait:g} s "
        f"for the other ranks at {where} (set {RENDEZVOUS_ENV} to change)",
        file=sys.stderr,
        flush=True,
    )
    try:
        port = int(os.environ["MASTER_PORT"])
        if r != 0:  # reach rank 0 from Python first: torch's own retries print C++ stack dumps
            _wait_for_port(os.environ["MASTER_ADDR"], port, wait)
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            port,
            ws,
            is_master=r == 0,
            timeout=datetime.timedelta(seconds=wait),
            wait_for_workers=True,
        )
        dist.init_process_group(
            backend,
            store=store,
            rank=r,
            world_size=ws,
            timeout=datetime.timedelta(minutes=timeout_min),
            device_id=dev if use_cuda else None,  # binds the nccl group to this rank's GPU
        )
        store.set_timeout(datetime.timedelta(minutes=timeout_min))
    except (
        RuntimeError,
        ValueError,
        OSError,
    ) as e:  # DistStoreError / DistNetworkError: RuntimeError
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(
            f"rank {r} of {ws}: the other ranks did not join at {where} within {wait:g} s "
            f"({first}); the group came from {_group_source()}: unset them for one process, or "
            f"raise {RENDEZVOUS_ENV}"
        ) from None


def init(device=None, timeout_min=30):
    """Join (or create) the process group. Returns (rank, world_size, local_rank, device).

    device: None = CUDA if available else CPU; "cpu" forces CPU (and gloo) even on a GPU node;
    "cuda" requires a working GPU (an error otherwise, never a silent CPU run).
    Idempotent: a second call returns the same values.
    """
    from bcmcore.config import UserError

    if _STATE["device"] is not None:
        return rank(), world_size(), _STATE["local_rank"], _STATE["device"]
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use cpu)")
    _slurm_env()
    try:
        ws = int(os.environ.get("WORLD_SIZE", "1"))
        r = int(os.environ.get("RANK", "0"))
        lr = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError(f"expected integers in {_group_source()}") from None
    if ws < 1 or not 0 <= r < ws or lr < 0:
        raise UserError(f"expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0: {_group_source()}")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        n = torch.cuda.device_count()
        dev = torch.device("cuda", lr % n)  # n == 1 when Slurm binds one GPU per task
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        if (
            ws > 1 and "OMP_NUM_THREADS" not in os.environ
        ):  # CPU processes on one host: share the cores
            local_ws = int(os.environ.get("LOCAL_WORLD_SIZE", ws))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ws))
    if ws > 1 and not dist.is_initialized():
        _rendezvous("nccl" if use_cuda else "gloo", r, ws, dev, use_cuda, timeout_min)
        _STATE["owned"] = True
    _STATE.update(rank=r, world_size=ws, local_rank=lr, device=dev)
    return r, ws, lr, dev


def shutdown():
    """Leave the process group created by init() (so an in-process launcher can run another job)."""
    if _STATE["owned"] and dist.is_initialized():
        dist.destroy_process_group()
    _STATE.update(rank=0, world_size=1, local_rank=0, device=None, owned=False)


def rank():
    return dist.get_rank() if dist.is_initialized() else _STATE["rank"]


def world_size():
    return dist.get_world_size() if dist.is_initialized() else _STATE["world_size"]


def is_main():
    return rank() == 0


def barrier():
    if dist.is_initialized():
        # nccl: name the device, or the barrier guesses it from the rank
        kwargs = {"device_ids": [comm_device().index]} if dist.get_backend() == "nccl" else {}
        dist.barrier(**kwargs)


def print0(*args, **kwargs):
    """print on rank 0 only (flushed: Slurm buffers otherwise)."""
    file = kwargs.pop("file", sys.stdout)
    if is_main():
        print(*args, **kwargs, file=file, flush=True)


# ----------------------------------------------------------------------------------- collectives


def comm_device():
    """The device every collective runs on: the current GPU under nccl, the CPU otherwise."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _active():
    """Collectives run whenever a group exists (also a 1-rank one: the nccl test uses one)."""
    return dist.is_initialized()


def _buckets(tensors):
    """Tensors grouped by dtype: one flat buffer per dtype on the communication device."""
    by_dtype = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    dev = comm_device()
    for group in by_dtype.values():
        yield group, torch.cat([t.detach().reshape(-1).to(dev) for t in group])


def _unflatten_(group, flat):
    offset = 0
    for t in group:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))  # back to t's own device, dtype and layout
        offset += n


def all_reduce_mean_(tensors):
    """Average tensors over ranks in place (any devices): one flat all-reduce per dtype."""
    if not _active() or not tensors:
        return
    for group, flat in _buckets(tensors):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        _unflatten_(
            group, flat.div_(world_size()) if flat.is_floating_point() else flat // world_size()
        )


def all_reduce_max_(tensors):
    """Element-wise maximum over ranks, in place (any devices)."""
    if not _active() or not tensors:
        return
    for group, flat in _buckets(tensors):
        dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        _unflatten_(group, flat)


def max_int(value):
    """The largest of one integer per rank (every rank gets it)."""
    t = torch.tensor([int(value)], dtype=torch.int64)
    all_reduce_max_([t])
    return int(t.item())


def broadcast_(tensors, src=0):
    """Rank `src`'s values into every rank's tensors, in place: one flat broadcast per dtype."""
    if not _active() or not tensors:
        return
    for group, flat in _buckets(tensors):
        dist.broadcast(flat, src=src)
        _unflatten_(group, flat)


def broadcast_state_(module, src=0):
    """Every parameter and buffer of `module` set to rank `src`'s (identical initial weights)."""
    broadcast_(list(module.state_dict().values()), src)


def gather_rows(rows, index, total):
    """All-gather per-rank rows [n_r, D] (any split, unequal counts allowed) with their global row
    indices -> a [total, D] float64 array in index order, on every rank. Indices travel as float64
    (exact below 2**53)."""
    import numpy as np

    rows = np.asarray(rows, np.float64).reshape(len(index), -1)
    out = np.empty((total, rows.shape[1]), np.float64)
    if not _active():
        out[np.asarray(index, np.int64)] = rows
        return out
    n_max = max_int(len(rows))
    buf = torch.full((n_max, rows.shape[1] + 1), -1.0, dtype=torch.float64, device=comm_device())
    buf[: len(rows), 0] = torch.as_tensor(np.asarray(index, np.float64), device=buf.device)
    buf[: len(rows), 1:] = torch.as_tensor(rows, device=buf.device)
    parts = [torch.empty_like(buf) for _ in range(world_size())]
    dist.all_gather(parts, buf)
    got = torch.cat(parts).cpu().numpy()
    got = got[got[:, 0] >= 0]
    out[got[:, 0].astype(np.int64)] = got[:, 1:]
    return out
