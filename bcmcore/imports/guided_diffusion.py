"""State dicts of the guided-diffusion U-Net family -> the project's ADM (nets/adm.py).

openai's guided-diffusion U-Net (Dhariwal & Nichol 2021) is the parent of two released families the
project imports: openai/consistency_models (`openai-cm`: CD / CT / EDM teacher) and
Mosasaur5526/BCM-iCT-torch (`bcm-ict-torch`: iCT / BCM). Both save bare fp32 state dicts with the
same module names, and the project's ADM is built block for block in the same order, so an import is
a key rename with no reshape (`input_blocks.{k+1}` = `down.{k}`, `middle_block` = `mid`,
`output_blocks` = `up`); the attention's qkv rows are `[q | k | v]` with heads of consecutive
channels in both, as ours reads them. This module holds that rename, the layout read off the shapes,
the checked conversion and the weights-only load; each format adds what its file does not say
(docs/imports.md).
"""

import re

import torch

from bcmcore.config import UserError

# per-block sub-module renames (guided-diffusion names -> nets/layers.py names)
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
    """The project's ADM parameter name for a guided-diffusion key (None if the key is unknown)."""
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


def need(sd, key, src, what):
    if key not in sd:
        raise UserError(f"{src}: not {what} checkpoint (no tensor '{key}')")
    return sd[key]


def layout(sd, src, what):
    """What the shapes determine: widths, levels, blocks per level, which levels attend (level 0 =
    full resolution), classes, AdaGN. Resolution and head width are not in the file."""
    w0 = need(sd, "time_embed.0.weight", src, what)
    conv_in = need(sd, "input_blocks.0.0.weight", src, what)
    mc, emb = w0.shape[1], w0.shape[0]
    outs = [int(k.split(".")[1]) for k in sd if k.startswith("output_blocks.")]
    if not outs:
        raise UserError(f"{src}: not {what} checkpoint (no output_blocks.* tensors)")
    # output_blocks: per level (lowest first) num_blocks + 1 blocks; all but the top level end in
    # an up block (a second residual block in the same entry)
    n_out = 1 + max(outs)
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
        need(sd, f"output_blocks.{lv * per}.0.out_layers.3.weight", src, what).shape[0]
        for lv in range(levels)
    ]
    # input_blocks.(1 + lv * per): the first block of level lv (per = num_blocks + 1)
    attn_levels = [lv for lv in range(levels) if f"input_blocks.{1 + lv * per}.1.qkv.weight" in sd]
    emb_out = need(sd, "middle_block.0.emb_layers.1.weight", src, what).shape[0]
    label = sd.get("label_emb.weight")
    return {
        "data_channels": conv_in.shape[1],
        "channels": mc,
        "ch_mult": [w // mc for w in reversed(widths)],
        "num_blocks": per - 1,
        "attn_levels": attn_levels,
        "emb_mult": emb // mc,
        "num_classes": 0 if label is None else label.shape[0],
        # AdaGN (use_scale_shift_norm): the embedding layer emits (scale, shift), twice the width
        "adagn": emb_out == 2 * sd["middle_block.0.out_layers.3.weight"].shape[0],
    }


def adm_net(lay, resolution, head_channels, **rest):
    """The project ADM's `net` dict for `layout(...)` at `resolution`: what the file determines,
    with `rest` (dropout, time embedding and its scale, attention form) from the importer that
    knows the code."""
    return {
        "arch": "adm",
        "data_channels": lay["data_channels"],
        "resolution": resolution,
        "channels": lay["channels"],
        "ch_mult": lay["ch_mult"],
        "num_blocks": lay["num_blocks"],
        "attn_res": [resolution // 2**lv for lv in lay["attn_levels"]],
        "head_channels": head_channels,
        "embedding": "positional",
        "emb_mult": lay["emb_mult"],
        "num_classes": lay["num_classes"],
        **rest,
    }


def convert(sd, src, model):
    """Guided-diffusion state dict -> the project model's state dict (prefix `net.`), checking
    names, shapes and dtype (the released EMA files hold fp32 master weights)."""
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
        out[f"net.{pk}"] = value.detach().clone()  # the file's tensors may share storages
    missing = [k for k in target if k not in out]
    if missing:
        raise UserError(
            f"{src}: the checkpoint lacks tensors the project's ADM needs, e.g. '{missing[0]}'"
        )
    return out


def load_state_dict(src, what):
    """The bare state dict, read with weights_only=True (no code, no arbitrary objects)."""
    try:
        sd = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"{src}: not {what} checkpoint "
            f"(torch.load with weights_only failed: {type(e).__name__})"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{src}: not {what} checkpoint (expected a bare state dict of tensors)")
    return sd
