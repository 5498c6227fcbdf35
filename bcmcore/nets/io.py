"""Network files: one logical record in two containers (docs/interfaces.md, nets).

The record is {"format", "kind", "model", "state_dict", "step", "config"} (+ optional
"provenance"). It is written either as a plain-dict `.pt` (torch.save, read back with
weights_only=True) or as `.safetensors`: the tensors in the safetensors body and every other key as
a JSON string in the header's string->string metadata. Neither reader runs code from the file: the
safetensors reader parses a JSON header and copies raw bytes (no pickle at all), and the .pt reader
is torch's weights-only unpickler. The container is picked by suffix on write and by content on
read, so every `.pt` written before safetensors existed still loads.
"""

import json
from pathlib import Path

import torch

from bcmcore.config import ConfigError, UserError, from_dict, to_dict
from bcmcore.nets.build import build_model
from bcmcore.nets.config import ModelConfig
from bcmcore.util import atomic_path, atomic_torch_save

FORMAT = "bcm-network/1"
SAFETENSORS = ".safetensors"
SUFFIXES = (".pt", SAFETENSORS)
# record keys stored as JSON strings in the safetensors metadata (the tensors are the body)
JSON_KEYS = ("model", "step", "config", "provenance")


def _unwrap(model):
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DDP / torch.compile wrappers
        model = getattr(model, "module", None) or model._orig_mod
    return model


def network_record(model, step, config):
    """The record of `model` (the preconditioned module: pass the EMA copy) at `step`, trained
    with the resolved run config `config` (plain dict)."""
    from bcmcore import __version__

    model = _unwrap(model)
    return {
        "format": FORMAT,
        "kind": model.cfg.kind,
        "model": to_dict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": int(step),
        "config": config,
        "provenance": {"written_by": f"bcm-pipeline {__version__}"},
    }


def save_network(path, model, step, config):
    """Write the network record of `model` atomically (temp name, fsync, rename): `.safetensors`
    by that suffix, else a plain-dict `.pt`."""
    write_record(path, network_record(model, step, config))


def write_record(path, record):
    path = Path(path)
    if path.suffix != SAFETENSORS:
        atomic_torch_save(record, path)
        return
    from safetensors.torch import save_file

    meta = {"format": record["format"], "kind": record["kind"]}
    meta.update({k: json.dumps(record[k]) for k in JSON_KEYS if k in record})
    meta["data_shape"] = json.dumps(_data_shape(record["model"]))
    # own storage per tensor: safetensors refuses tensors that share memory (views, tied weights)
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in record["state_dict"].items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _data_shape(model_dict):
    """One sample's shape, (C,) for the toy MLP else (C, H, W) (as nets/facts.py:data_shape):
    informational, for tools that read the safetensors header without bcm."""
    net = model_dict.get("net", {})
    if net.get("arch") == "mlp":
        return [net.get("data_channels")]
    return [net.get("data_channels"), net.get("resolution"), net.get("resolution")]


def read_record(path, device="cpu"):
    """The checked network record of a `.pt` or `.safetensors` file (told apart by content)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: network file not found (expected a network-*.pt written by `bcm train`, "
            f"or a {SAFETENSORS} from `bcm import` / `bcm convert`)"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    # torch.save writes a zip ("PK") or, legacy, a pickle (protocol byte 0x80); safetensors an
    # 8-byte header length, then the JSON header
    is_zip = head[:4] == b"PK\x03\x04"
    if not is_zip and (head[8:9] == b"{" or path.suffix == SAFETENSORS):
        record = _read_safetensors(path, device)
    elif is_zip or head[:1] == b"\x80":
        record = _read_pt(path, device)
    else:
        raise UserError(
            f"{path}: not a network file: neither a torch.save file nor {SAFETENSORS} "
            f"(it starts with {head[:8]!r})"
        )
    check_network_dict(path, record)
    return record


def _unreadable(path, e):
    return UserError(
        f"{path}: not a readable network file (truncated or wrong format: "
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    )


def _check_format(path, got, where):
    if got == FORMAT:
        return
    if isinstance(got, str) and got.startswith("bcm-network/"):
        raise UserError(
            f"{path}: network format {got!r}, this bcm-pipeline reads {FORMAT}: a file from "
            "another version of bcm-pipeline (convert it there with `bcm convert`, or update)"
        )
    raise UserError(
        f"{path}: not a {FORMAT} network file ({where}: {got!r}); training-state files are not "
        "networks, use network-snapshot-*.pt or network-final.pt"
    )


def _read_pt(path, device):
    try:  # an open file: torch.load of a *.safetensors name would take it for safetensors
        with open(path, "rb") as f:
            d = torch.load(f, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled classes, ...
        raise _unreadable(path, e) from None
    got = d.get("format") if isinstance(d, dict) else type(d).__name__
    _check_format(path, got, "format")
    return d


def _read_safetensors(path, device):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # header not JSON, offsets past the end (truncated), bad dtype, ...
        raise _unreadable(path, e) from None
    _check_format(path, meta.get("format"), "safetensors metadata 'format'")
    record = {"format": meta["format"], "kind": meta.get("kind"), "state_dict": tensors}
    for key in (*JSON_KEYS, "data_shape"):
        if key not in meta:
            if key in ("model", "step"):
                raise UserError(
                    f"{path}: safetensors metadata has no {key!r} (the model config and step "
                    f"of a {FORMAT} file): not written by bcm-pipeline"
                )
            continue
        try:
            value = json.loads(meta[key])
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}: safetensors metadata {key!r} is not valid JSON ({e})"
            ) from None
        if key != "data_shape":
            record[key] = value
        elif isinstance(record.get("model"), dict) and value != _data_shape(record["model"]):
            raise UserError(
                f"{path}: safetensors metadata 'data_shape' {value} does not match its model "
                f"config ({_data_shape(record['model'])}): an edited header"
            )
    return record


def build_from_record(path, record, device="cpu"):
    """The model of a checked record, weights loaded strictly; -> (model.eval(), ModelConfig)."""
    try:
        cfg = from_dict(ModelConfig, record["model"], "model")
        model = build_model(cfg).to(device)
        model.load_state_dict(record["state_dict"])
    except (ConfigError, KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"{path}: network file does not match its model config ({e})") from None
    return model.eval(), cfg


def load_network(path, device="cpu"):
    """-> (model.eval(), meta) with meta = {"step", "config", "kind", "model_config", "path",
    "provenance"} from a `.pt` or `.safetensors` network file."""
    record = read_record(path, device)
    model, cfg = build_from_record(path, record, device)
    meta = {
        "step": record.get("step"),
        "config": record.get("config"),
        "kind": cfg.kind,
        "model_config": cfg,
        "path": str(path),
        "provenance": record.get("provenance") or {},
    }
    return model, meta


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
