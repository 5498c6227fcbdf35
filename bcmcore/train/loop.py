"""The one training loop: iCT, BCT (from scratch or fine-tuned from iCT), iGCT and the EDM baseline.

Resume is automatic and bitwise: noise is reseeded per (seed, step, chunk) (train/step.py), the
curriculum and lr are functions of the step, the data position is step * batch, and the newest
complete training state holds the weights, EMA and optimizer. Rerunning the same command continues
where the last state left off.
"""

import json
import math
import resource
import time
from pathlib import Path

import torch

from bcmcore import dist, runlock
from bcmcore.config import ConfigError, UserError
from bcmcore.train import checkpoint, identity, interrupt
from bcmcore.train.config import check_data_fits
from bcmcore.train.identity import load_run_config
from bcmcore.train.monitor import Monitor
from bcmcore.train.step import Stepper
from bcmcore.util import atomic_write_text, remove_tmp


class NonFiniteLoss(UserError):
    """The loss became NaN/Inf: the run stops before the bad update; the last checkpoint is
    intact."""


class RunLog:
    """Rank-0 status lines (stdout + log.txt) and stats.jsonl rows; silent on other ranks."""

    def __init__(self, run_dir, main):
        self.run_dir, self.main = Path(run_dir), main

    def __call__(self, msg):
        if self.main:
            print(msg, flush=True)
            with open(self.run_dir / "log.txt", "a") as f:
                f.write(msg + "\n")

    def stats(self, row):
        if self.main:
            with open(self.run_dir / "stats.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def truncate_stats(self, step):
        """Drop the rows after `step` (written after the state we resume from, before a kill)."""
        path = self.run_dir / "stats.jsonl"
        if self.main and path.is_file():
            lines = path.read_text().splitlines(keepends=True)
            keep = [ln for ln in lines if ln.strip() and _row_step(ln) <= step]
            if len(keep) != len(lines):
                atomic_write_text(path, "".join(keep))


def _row_step(line):
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a row cut short by the kill


def init_from_network(model, path):
    """Start weights from a network file; a CM network into a BCM model goes through bcm_from_cm
    ([I|0] init)."""
    from bcmcore.nets import bcm_from_cm, load_network

    if not Path(path).is_file():
        raise ConfigError(
            f"train.init: {path} not found (expected a network file, e.g. the iCT run's "
            f"network-final.pt)"
        )
    src, _ = load_network(path)
    if getattr(model, "kind", None) == "bcm" and getattr(src, "kind", None) == "cm":
        src = bcm_from_cm(src)  # BCM §3.2: identity-zero fine-tuning init
    try:
        model.load_state_dict(src.state_dict())
    except RuntimeError as e:
        raise ConfigError(
            f"train.init: {path} does not fit model config ({str(e).splitlines()[0]}); BCM "
            f"fine-tuning needs model.net.two_time_embed: project"
        ) from None


def _peak_mem_gb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def training_loop(run_dir, device=None):
    """Train the stage described by RUN_DIR/config.json, resuming from the newest training state.

    Writes training-state-*.pt, network-snapshot-*.pt, log.txt, stats.jsonl and finally
    network-final.pt.
    device: None (CUDA if available) or "cpu". Returns the path of network-final.pt.
    One trainer per run directory (bcmcore.runlock); SIGINT/SIGTERM stop at a step boundary, with a
    state.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    check_data_fits(cfg)
    cfg = identity.with_data_identity(cfg, where=str(run_dir / "config.json"))
    rank, world, _, device = dist.init(device)
    with runlock.hold(run_dir, dist.is_main(), dist.barrier), interrupt.on_signals() as stop:
        return _train(run_dir, cfg, rank, world, device, stop)


def _train(run_dir, cfg, rank, world, device, stop):
    from bcmcore.data import make_loader
    from bcmcore.losses import build_loss
    from bcmcore.nets import build_model

    if dist.is_main():
        remove_tmp(run_dir)  # partial files of a killed writer (we hold the run lock)
    batch_gpu, rounds = cfg.train.split_batch(world)  # a bad split fails before any work
    log = RunLog(run_dir, dist.is_main())
    final_path = checkpoint.final_path(run_dir)

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank (broadcast below too)
    model = build_model(cfg.model)
    loss_fn = build_loss(cfg.loss, cfg.model)
    # identity keys changed: a new run; runtime keys or a longer run: a resume (train/identity.py)
    cfg, resume = checkpoint.resume_point(run_dir, cfg, log)
    t = cfg.train
    if resume is None and t.init:
        init_from_network(model, t.init)
    model.to(device).train()
    if world > 1:
        dist.broadcast_state_(model)
    # the Stepper sets the backend flags (train/device.py): nothing above runs a matmul
    stepper = Stepper(model, loss_fn, t, device, cfg.model.net.num_classes > 0, rounds=rounds)
    step = checkpoint.restore(resume, stepper, log) if resume is not None else 0
    log.truncate_stats(step)
    if step >= t.total_steps and final_path.is_file():
        log(f"{final_path} exists: nothing to do")
        return final_path

    log(_describe(run_dir, cfg, stepper, world, device, batch_gpu, rounds, step))
    monitor = Monitor(run_dir, cfg, dist.is_main(), step, device, log)
    loader = make_loader(cfg.data, batch_gpu, rank, world, t.seed, step * t.batch, device=device)
    _steps(run_dir, cfg, stepper, loader, step, monitor, log, stop)
    monitor.close()
    dist.barrier()
    return final_path


def _describe(run_dir, cfg, stepper, world, device, batch_gpu, rounds, step):
    """The run's first log line: model size, loss, processes, batch split, steps."""
    t = cfg.train
    n_params = sum(p.numel() for p in stepper.params)
    threads = f" ({torch.get_num_threads()} threads each)" if device.type == "cpu" else ""
    return (
        f"run {run_dir}: {cfg.model.kind} model ({n_params / 1e6:.3f} M params), loss "
        f"{cfg.loss['kind']}, "
        f"{world} process(es) on {device.type}{threads}, "
        f"batch {t.batch} = {batch_gpu} x {rounds} rounds x {world}, "
        f"steps {step}->{t.total_steps}"
    )


def _steps(run_dir, cfg, stepper, loader, step, monitor, log, stop):
    """Train from `step` to train.total_steps, then write network-final.pt (the EMA): status rows,
    training states and EMA snapshots at their cadences; a stop signal ends it with a state."""
    from bcmcore.nets import save_network

    t, config, world = cfg.train, cfg.as_dict(), dist.world_size()

    def save(step):
        if dist.is_main():
            checkpoint.save_state(run_dir, step, stepper, config, t.keep_last)
        dist.barrier()

    window = StatusWindow(t.batch, stepper.device)
    while step < t.total_steps:
        values = stepper.backward(loader, step)
        _check_finite(values, step, run_dir)
        stepper.update()
        step += 1
        window.add(values)
        if step % t.status_every == 0 or step == t.total_steps:
            row = window.row(step, stepper.lr)
            log.stats(row)
            log(monitor.status(row))  # timestamp, elapsed, ETA; TensorBoard / W&B scalars
            window.reset()
        if step % t.checkpoint_every == 0 or step == t.total_steps:
            save(step)
        if t.snapshot_every and step % t.snapshot_every == 0 and dist.is_main():
            save_network(checkpoint.snapshot_path(run_dir, step), stepper.ema.model, step, config)
            snap = monitor.snapshot(step, stepper.ema.model)  # EMA grid, optional quick FID
            if snap and len(snap) > 1:
                log.stats(snap)
        if stop.signum is not None and step < t.total_steps:  # SIGINT/SIGTERM: a state, then exit
            if world == 1 and step % t.checkpoint_every:  # one process: no other rank to agree with
                save(step)
            raise stop.interrupted(step, checkpoint.latest_state(run_dir))
    if dist.is_main():
        final_path = checkpoint.final_path(run_dir)
        save_network(final_path, stepper.ema.model, step, config)
        log(f"wrote {final_path}")


def _check_finite(values, step, run_dir):
    """Stop before the update of a step whose loss terms are NaN/Inf."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLoss(
            f"step {step}: non-finite {'/'.join(bad)} ({detail}); stopped before the update; "
            f"last good state: {checkpoint.latest_state(run_dir) or 'none'}. "
            f"Lower train.lr or set train.grad_clip"
        )


class StatusWindow:
    """The loss terms summed since the last status row, and the wall time they took."""

    def __init__(self, batch, device):
        self.batch, self.device = batch, device
        self.sums, self.n, self.tick = {}, 0, time.time()
        self.t_start = self.tick

    def reset(self):
        """After a row is written: the next window's time and peak memory start here."""
        self.sums, self.n, self.tick = {}, 0, time.time()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def add(self, values):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def row(self, step, lr):
        """The stats.jsonl row after `step` steps; `lr`: the last step's."""
        now = time.time()
        return {
            "step": step,
            "kimg": step * self.batch / 1e3,
            "lr": lr,
            **{k: v / self.n for k, v in self.sums.items()},
            "sec_per_kimg": (now - self.tick) / (self.n * self.batch / 1e3),
            "mem_gb": _peak_mem_gb(self.device),
            "time_s": now - self.t_start,
        }
