"""The authors' released checkpoints -> project network files (`bcm-network/1`, fp32).

Formats (docs/imports.md):
  bcm-ict-torch  Mosasaur5526/BCM-iCT-torch `ema_<rate>_<step>.pt` state dicts (ImageNet-64 iCT
                 and BCM, ADM)
  openai-cm      openai/consistency_models state dicts (ImageNet-64 and LSUN-256 CD, CT and
                 their EDM teachers, ADM)
  igct-edm       swimmincatt35/iGCT `network-snapshot-<tick>.pkl` EDM persistence pickles
                 (CIFAR-10 NCSN++), read by a restricted unpickler that never executes the source
                 code embedded in them
"""

import re
from pathlib import Path

from bcmcore.config import UserError, from_dict

FORMATS = ("bcm-ict-torch", "openai-cm", "igct-edm")


def _step(src):
    """The training step in a snapshot name (ema_0.99997_234000.pt, network-snapshot-000800.pkl);
    0 for names without one (openai's cd_imagenet64_l2.pt)."""
    m = re.search(r"[_-](\d{6,})\.(?:pt|pkl)$", Path(src).name)
    return int(m[1]) if m else 0


def import_model(fmt, src, kind=None, resolution=None, head_channels=64, clsloc_labels=None):
    """-> (model.eval(), provenance dict). Raises UserError for an unknown format or a bad file.

    resolution None: bcm-ict-torch 64 (released), openai-cm read off the released widths."""
    from bcmcore.nets import ModelConfig, build_model

    src = Path(src)
    if fmt not in FORMATS:
        raise UserError(
            f"--format: unknown checkpoint format {fmt!r} (known: {', '.join(FORMATS)})"
        )
    if not src.is_file():
        raise UserError(f"{src}: checkpoint file not found")
    if fmt == "bcm-ict-torch":
        from bcmcore.imports import bcm_ict_torch as mod

        sd = mod.load_state_dict(src)
        cfg = mod.infer_model_config(sd, src, kind, resolution or 64, head_channels)
    elif fmt == "openai-cm":
        from bcmcore.imports import openai_cm as mod

        sd = mod.load_state_dict(src)
        cfg = mod.infer_model_config(sd, src, kind, resolution, head_channels)
    else:
        from bcmcore.imports import igct_edm as mod

        if clsloc_labels:
            raise UserError(
                "--clsloc-labels applies to ImageNet-64 (bcm-ict-torch, openai-cm) checkpoints only"
            )
        if kind not in (None, "igct"):
            raise UserError(f"--kind: igct-edm checkpoints hold iGCT models, got --kind {kind}")
        sd, cfg = mod.read_snapshot(src)
    model = build_model(from_dict(ModelConfig, cfg, "model"))
    state = mod.convert(sd, src, model)
    provenance = {"format": fmt, "source": src.name, "step": _step(src), "labels": "authors"}
    if clsloc_labels:
        from bcmcore.imports.labels import clsloc_permutation

        key = "net.cond.label.weight"
        if key not in state:
            raise UserError(f"{src}: --clsloc-labels given, but the model is not class-conditional")
        state[key] = state[key][clsloc_permutation(clsloc_labels, state[key].shape[0])]
        provenance["labels"] = "clsloc (npz order, remapped on import)"
    check_state(src, model, state)
    model.load_state_dict(state)
    return model.eval(), provenance


def check_state(src, model, state):
    """The converted tensors against the model they fill: a missing or unexpected key or a wrong
    shape is one error naming the checkpoint, the key and the shapes (not torch's key dump)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UserError(
            f"{src}: the checkpoint does not fit the inferred model ({what}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected keys): wrong --format/--kind, "
            f"or not an authors' release"
        )
    for key, t in state.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{src}: {key} has shape {tuple(t.shape)}, the inferred model expects "
                f"{tuple(expected[key].shape)} (check --resolution / --head-channels)"
            )


def import_checkpoint(fmt, src, out, **options):
    """Import `src` and write the project network file `out`; returns the model."""
    from bcmcore.nets import save_network
    from bcmcore.util import sha256_file

    model, prov = import_model(fmt, src, **options)
    prov["sha256"] = sha256_file(src)
    save_network(out, model, prov["step"], {"import": prov})
    return model
