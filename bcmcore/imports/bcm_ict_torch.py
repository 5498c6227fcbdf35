"""Mosasaur5526/BCM-iCT-torch checkpoints (ImageNet-64 iCT / BCM, `ema_<rate>_<step>.pt`) -> ADM.

The released files are bare fp32 state dicts of the authors' guided-diffusion U-Net (no config, no
wrapper). The project's ADM (nets/adm.py) is the same network, so the import is a key rename with no
reshape: module indices line up one to one (`input_blocks.{k+1}` = `down.{k}`, `middle_block` =
`mid`, `output_blocks` = `up`), and the attention's qkv output already has the [q | k | v] head
layout ours reads. What the shapes determine (width, levels, blocks, attention levels, classes, iCT
vs BCM) is read off them; resolution and head width are not in the file and come from the caller
(released: 64 px, 64-channel heads).

The authors' evaluation, which the project's ConsistencyModel reproduces exactly (docs/imports.md):
time input 250 ln t (c_noise = ln(t)/4, times 1000 inside ADM), c_in = 1/sqrt(t^2 + sd^2), iCT with
the CM boundary scalings (Song et al. 2023 App. C), BCM with BCM Eq. 5. Weights stay fp32: the
authors' fp16 is a run-time cast of the torso in their sampler, never a property of the file.
"""

import re

import torch

from bcmcore.config import UserError

# per-block sub-module renames (authors' guided-diffusion names -> nets/layers.py names)
_BLOCK = {
    "in_layers.0": "norm0",
    "in_layers.2": "conv0",
    "emb_layers.1": "emb",
    "out_layers.0": "norm1",
    "out_layers.3": "conv1",
    "skip_connection": "skip",
    "norm": "norm",
    "qkv": "qkv",
    "proj_out": "proj",
}
_TOP = {
    "time_embed.0": "time_embed.mlp_t.0",
    "time_embed.2": "time_embed.mlp_t.2",
    "time_embed_end.0": "time_embed.mlp_u.0",
    "time_embed_end.2": "time_embed.mlp_u.2",
    "time_embed_align": "time_embed.align",
    "label_emb": "cond.label",
    "input_blocks.0.0": "conv_in",
    "out.0": "norm_out",
    "out.2": "conv_out",
}
_BLOCK_KEY = re.compile(
    r"^(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?(\d+)\.(.+)\.(weight|bias)$"
)


def project_key(key):
    """The project's ADM parameter name for one of the authors' keys (None if the key is
    unknown)."""
    module, _, leaf = key.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{leaf}"
    m = _BLOCK_KEY.match(key)
    if not m or m[4] not in _BLOCK:
        return None
    where, i, j, sub, leaf = m.groups()
    if where == "middle_block":  # middle_block.<j>.<sub>: no block index
        if i is not None:
            return None
        return f"mid.{j}.{_BLOCK[sub]}.{leaf}"
    if i is None:
        return None
    if where == "input_blocks":
        return f"down.{int(i) - 1}.{j}.{_BLOCK[sub]}.{leaf}" if int(i) > 0 else None
    return f"up.{i}.{j}.{_BLOCK[sub]}.{leaf}"


def _need(sd, key, src):
    if key not in sd:
        raise UserError(f"{src}: not a BCM-iCT-torch checkpoint (no tensor '{key}')")
    return sd[key]


def infer_model_config(sd, src, kind=None, resolution=64, head_channels=64):
    """ModelConfig dict of the project ADM that holds this state dict (what the shapes
    determine)."""
    w0 = _need(sd, "time_embed.0.weight", src)
    _need(sd, "input_blocks.0.0.weight", src)
    mc, emb = w0.shape[1], w0.shape[0]
    is_bcm = "time_embed_end.0.weight" in sd
    if kind is None:
        kind = "bcm" if is_bcm else "cm"
    if kind not in ("cm", "bcm"):
        raise UserError(f"--kind: expected cm or bcm, got {kind!r}")
    if (kind == "bcm") != is_bcm:
        found = (
            "a BCM net (time_embed_end.* present)" if is_bcm else "an iCT net (no time_embed_end.*)"
        )
        raise UserError(f"{src}: --kind {kind} given, but the file holds {found}")
    # output_blocks: per level (lowest first) num_blocks + 1 blocks; all but the top level end in
    # an up block
    n_out = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("output_blocks."))
    ups = [
        o
        for o in range(n_out)
        if any(
            k.startswith(f"output_blocks.{o}.")
            and ".in_layers." in k
            and not k.startswith(f"output_blocks.{o}.0.")
            for k in sd
        )
    ]
    levels = len(ups) + 1
    if n_out % levels:
        raise UserError(f"{src}: {n_out} output blocks do not split into {levels} levels")
    per = n_out // levels
    widths = [
        sd[f"output_blocks.{lv * per}.0.out_layers.3.weight"].shape[0] for lv in range(levels)
    ]
    ch_mult = [w // mc for w in reversed(widths)]
    attn_res = []
    for lv in range(
        levels
    ):  # input_blocks.(1 + lv * per + b): level lv, block b (per = num_blocks + 1)
        if f"input_blocks.{1 + lv * per}.1.qkv.weight" in sd:
            attn_res.append(resolution // 2**lv)
    label = sd.get("label_emb.weight")
    return {
        "kind": kind,
        "net": {
            "arch": "adm",
            "data_channels": sd["input_blocks.0.0.weight"].shape[1],
            "resolution": resolution,
            "channels": mc,
            "ch_mult": ch_mult,
            "num_blocks": per - 1,
            "attn_res": attn_res,
            "head_channels": head_channels,
            # training-only: the authors' hard-coded 0.2 at the lower levels (16 and 8 at 64 px)
            # and the middle
            "dropout": 0.2,
            "dropout_max_res": max(resolution // 4, 1),
            "embedding": "positional",
            "emb_mult": emb // mc,
            "num_classes": 0 if label is None else label.shape[0],
            "two_time": kind == "bcm",
            "two_time_embed": "project",
            "adagn": False,  # the iCT / BCM ADM: embedding added, RMS-normalised q/k/v, 250 ln t
            "cosine_attention": True,
            "positional_scale": 1000.0,  # the authors' time_embed_end + bias-free time_embed_align
        },
    }


def convert(sd, src, model):
    """Authors' state dict -> the project model's state dict (prefix `net.`), checking names and
    shapes."""
    target = model.state_dict()
    out = {}
    for key, value in sd.items():
        pk = project_key(key)
        if pk is None or f"net.{pk}" not in target:
            raise UserError(
                f"{src}: tensor '{key}' has no counterpart in the project's ADM "
                f"({pk or 'unknown name'})"
            )
        want = target[f"net.{pk}"].shape
        if tuple(value.shape) != tuple(want):
            raise UserError(
                f"{src}: shape mismatch for tensor '{key}': file {list(value.shape)}, "
                f"project net.{pk} expects {list(want)} (check --resolution / --head-channels)"
            )
        if value.dtype != torch.float32:
            raise UserError(
                f"{src}: tensor '{key}' is {value.dtype}, expected float32 (EMA master weights)"
            )
        out[f"net.{pk}"] = (
            value.detach().clone()
        )  # the file's tensors are views into two shared storages
    missing = [k for k in target if k not in out]
    if missing:
        raise UserError(
            f"{src}: the checkpoint lacks tensors the project's ADM needs, e.g. '{missing[0]}'"
        )
    return out


def load_state_dict(src):
    """The bare state dict, read with weights_only=True (the released files need nothing else)."""
    try:
        sd = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"{src}: not a BCM-iCT-torch checkpoint "
            f"(torch.load with weights_only failed: {type(e).__name__})"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(
            f"{src}: not a BCM-iCT-torch checkpoint (expected a bare state dict of tensors)"
        )
    return sd
