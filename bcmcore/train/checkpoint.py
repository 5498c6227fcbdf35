"""Training-state files: `training-state-<step>.pt` (everything needed to resume, bit for bit),
and resuming from them.

Plain tensors and types only (loaded with weights_only=True), written atomically (temp name, fsync,
rename), so the newest file under its final name is always complete; the last K are kept. Network
files (`network-snapshot-<step>.pt`, `network-final.pt`) are written by `bcmcore.nets.save_network`.

A state holds the step, the weights, the EMA, the optimizer, a loss's own tensors and the config;
nothing about the data position: the loader starts at sample step * batch (bcmcore/data.py), so
the step says it. (States written before this carry a `data.start_sample` that is never read.)
"""

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bcmcore import dist
from bcmcore.config import UserError
from bcmcore.train import identity
from bcmcore.util import atomic_torch_save

FORMAT = "bcm-train-state/1"
_STATE_RE = re.compile(r"^training-state-(\d+)\.pt$")


def state_path(run_dir, step):
    return Path(run_dir) / f"training-state-{step:07d}.pt"


def snapshot_path(run_dir, step):
    return Path(run_dir) / f"network-snapshot-{step:07d}.pt"


def final_path(run_dir):
    return Path(run_dir) / "network-final.pt"


def find_states(run_dir):
    """[(step, path)] of complete training states, oldest first (temp files `.tmp-*` never
    match)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STATE_RE.match(p.name))]
    return sorted(found)


def latest_state(run_dir):
    states = find_states(run_dir)
    return states[-1][1] if states else None


def save_state(run_dir, step, stepper, config, keep_last):
    """Write training-state-<step>.pt of a train.step.Stepper atomically, then delete all but the
    newest `keep_last` states. A loss with its own tensors (CD's target network) under "loss"."""
    loss_fn = stepper.loss_fn
    state = {
        "format": FORMAT,
        "step": int(step),
        "net": stepper.model.state_dict(),
        "ema": stepper.ema.model.state_dict(),
        "optimizer": stepper.optimizer.state_dict(),
        "config": config,
    }
    loss_state = loss_fn.state_dict() if hasattr(loss_fn, "state_dict") else None
    if loss_state:
        state["loss"] = loss_state
    path = state_path(run_dir, step)
    atomic_torch_save(state, path)
    for _, old in find_states(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_state(path):
    """Read a training state; a truncated, foreign or unreadable file is one UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: training state not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled classes...
        raise UserError(
            f"{path}: cannot read training state ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"the file is truncated or corrupt: delete it to resume from the previous state"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a bcm training state (expected format {FORMAT!r})")
    return state


def supersede(run_dir):
    """Move the states, snapshots and final network of an earlier config into `superseded-<k>/`.

    The workflow reruns a stage when its settings change; resuming the old checkpoints would
    silently return the old network (or mix two recipes), so a changed config starts over and keeps
    the old files.
    """
    run_dir = Path(run_dir)
    k = 1
    while (run_dir / f"superseded-{k}").exists():
        k += 1
    dest = run_dir / f"superseded-{k}"
    dest.mkdir()
    for p in sorted(run_dir.iterdir()):
        if (
            _STATE_RE.match(p.name)
            or p.name.startswith(("network-", "grid-", "events.out.tfevents"))  # train/monitor.py
            or p.name == "stats.jsonl"
        ):
            p.rename(dest / p.name)
    return dest


@dataclass
class Resume:
    """The training state a run continues from (`resume_point`), until `restore` loads it."""

    path: Path
    state: dict
    changed: tuple  # runtime keys / length changed since the state (train/identity.py)


def resume_point(run_dir, cfg, log):
    """(the config to run, a Resume or None) for RunConfig `cfg` and RUN_DIR's newest state.

    train/identity.py decides: a state with other identity keys moves the old run to
    superseded-<k>/ and the run starts over; a fresh run fixes its schedule length. Every rank
    calls this.
    """
    path = latest_state(run_dir)
    state = load_state(path) if path else None
    decision = identity.compare(state["config"], cfg, state["step"]) if state is not None else None
    if decision is not None and not decision.restart:
        return decision.cfg, Resume(path, state, decision.changed)
    if decision is not None:
        dist.barrier()  # every rank has read the old state before rank 0 moves it
        if dist.is_main():
            moved = supersede(run_dir)
            log(
                f"{path.name} was written with other identity keys ({'; '.join(decision.changed)})"
                f": moved the old run to {moved.name}/, starting over"
            )
        dist.barrier()
    return identity.start(cfg), None


def restore(resume, stepper, log):
    """Load `resume`'s weights, EMA, optimizer and loss tensors into a train.step.Stepper; -> its
    step. The state's tensors are dropped once loaded (the run keeps one copy of the weights)."""
    state, resume.state = resume.state, None
    stepper.model.load_state_dict(state["net"])
    stepper.ema.load_state_dict(state["ema"])
    stepper.optimizer.load_state_dict(state["optimizer"])
    if hasattr(stepper.loss_fn, "load_state_dict"):  # CD's target network theta-
        stepper.loss_fn.load_state_dict(state.get("loss", {}))
    log(f"resumed from {resume.path.name} (step {state['step']})")
    if resume.changed:
        log(f"changed since that state (no restart): {'; '.join(resume.changed)}")
    return state["step"]
