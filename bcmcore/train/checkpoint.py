"""Training-state files: `training-state-<step>.pt` (everything needed to resume, bit for bit).

Plain tensors and types only (loaded with weights_only=True), written atomically (temp name, fsync,
rename), so the newest file under its final name is always complete; the last K are kept. Network
files (`network-snapshot-<step>.pt`, `network-final.pt`) are written by `bcmcore.nets.save_network`.
"""

import re
from pathlib import Path

import torch

from bcmcore.config import UserError
from bcmcore.util import atomic_torch_save

FORMAT = "bcm-train-state/1"
_STATE_RE = re.compile(r"^training-state-(\d+)\.pt$")


def state_path(run_dir, step):
    return Path(run_dir) / f"training-state-{step:07d}.pt"


def snapshot_path(run_dir, step):
    return Path(run_dir) / f"network-snapshot-{step:07d}.pt"


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


def save_state(
    run_dir, *, step, model, ema, optimizer, start_sample, config, keep_last, loss_state=None
):
    """Write training-state-<step>.pt atomically, then delete all but the newest `keep_last`
    states. `loss_state`: a loss's own tensors (CD's target network), under "loss"."""
    state = {
        "format": FORMAT,
        "step": int(step),
        "net": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "data": {"start_sample": int(start_sample)},
        "config": config,
    }
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
