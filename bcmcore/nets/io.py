"""Network files: a plain dict loaded with weights_only=True (docs/interfaces.md, nets)."""

from pathlib import Path

import torch

from bcmcore.config import ConfigError, UserError, from_dict, to_dict
from bcmcore.nets.build import build_model
from bcmcore.nets.config import ModelConfig
from bcmcore.util import atomic_torch_save

FORMAT = "bcm-network/1"


def save_network(path, model, step, config):
    """Write {"format", "kind", "model", "state_dict", "step", "config"} atomically (temp name,
    fsync, rename).

    `model` is the preconditioned module (pass the EMA copy); `config` the resolved run config
    (plain dict).
    """
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DDP / torch.compile wrappers
        model = getattr(model, "module", None) or model._orig_mod
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {
            "format": FORMAT,
            "kind": model.cfg.kind,
            "model": to_dict(model.cfg),
            "state_dict": state,
            "step": int(step),
            "config": config,
        },
        path,
    )


def load_network(path, device="cpu"):
    """-> (model.eval(), meta) with meta = {"step", "config", "kind", "model_config", "path"}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: network file not found (expected a network-*.pt written by `bcm train`)"
        )
    try:
        d = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled classes, ...
        raise UserError(
            f"{path}: not a readable network file (truncated or wrong format: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise UserError(
            f"{path}: not a {FORMAT} network file (format: {got!r}); "
            "training-state files are not networks, use network-snapshot-*.pt or network-final.pt"
        )
    check_network_dict(path, d)
    try:
        cfg = from_dict(ModelConfig, d["model"], "model")
        model = build_model(cfg).to(device)
        model.load_state_dict(d["state_dict"])
    except (ConfigError, KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"{path}: network file does not match its model config ({e})") from None
    meta = {
        "step": d.get("step"),
        "config": d.get("config"),
        "kind": cfg.kind,
        "model_config": cfg,
        "path": str(path),
    }
    return model.eval(), meta


def check_network_dict(path, d):
    """The structure of a loaded network file and the finiteness of its weights: a file with NaN or
    inf weights (a diverged run, a corrupted copy) would give black images, a wrong structure a
    TypeError deep in the model. One error naming the file and the first bad key."""
    kinds = {"kind": str, "model": dict, "state_dict": dict, "step": (int, type(None))}
    for key, tp in kinds.items():
        if not isinstance(d.get(key), tp):
            raise UserError(
                f"{path}: network file key {key!r} is {type(d.get(key)).__name__}, expected "
                f"{tp.__name__ if isinstance(tp, type) else 'an integer'}"
            )
    for name, t in d["state_dict"].items():
        if not isinstance(t, torch.Tensor):
            raise UserError(f"{path}: state_dict[{name!r}] is {type(t).__name__}, not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(
                f"{path}: weight {name!r} holds {bad} non-finite values (NaN/inf): a diverged or "
                "corrupted network; use an earlier snapshot"
            )
