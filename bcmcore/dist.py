"""torch.distributed from the environment: torchrun, submitit (via launch.py's export), or plain
Slurm.

One process per GPU. The CUDA device comes from LOCAL_RANK and is used only when CUDA really works
(a Slurm node may set CUDA_VISIBLE_DEVICES without having a usable GPU). Backend: nccl on GPU, gloo
on CPU. Rank 0 writes files; every rank computes.
"""

import datetime
import os
import subprocess
import sys

import torch
import torch.distributed as dist

_STATE = {"rank": 0, "world_size": 1, "local_rank": 0, "device": None, "owned": False}


def _slurm_env():
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from a multi-task `srun` step (no torchrun, no
    submitit)."""
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


def init(device=None, timeout_min=30):
    """Join (or create) the process group. Returns (rank, world_size, local_rank, device).

    device: None = CUDA if available else CPU; "cpu" forces CPU (and gloo) even on a GPU node.
    Idempotent: a second call returns the same values.
    """
    if _STATE["device"] is not None:
        return rank(), world_size(), _STATE["local_rank"], _STATE["device"]
    _slurm_env()
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    r = int(os.environ.get("RANK", "0"))
    lr = int(os.environ.get("LOCAL_RANK", "0"))
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
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise RuntimeError(
                    f"WORLD_SIZE={ws} but {key} is not set (launch with torchrun, srun or bcm "
                    "launch)"
                )
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            init_method="env://",
            rank=r,
            world_size=ws,
            timeout=datetime.timedelta(minutes=timeout_min),
        )
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
        dist.barrier()


def print0(*args, **kwargs):
    """print on rank 0 only (flushed: Slurm buffers otherwise)."""
    file = kwargs.pop("file", sys.stdout)
    if is_main():
        print(*args, **kwargs, file=file, flush=True)


def all_reduce_mean_(tensors):
    """Average a list of same-dtype-grouped tensors over ranks in place: one flat bucket per
    dtype."""
    ws = world_size()
    if ws == 1 or not tensors:
        return
    by_dtype = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= ws
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n
