"""swimmincatt35/iGCT `network-snapshot-*.pkl` (EDM persistence pickles) -> iGCT NCSN++ network.

The snapshot's `ema` is an `IGCTPrecond` holding two EDM `SongUNet`s: `enc`, the noiser (no w
input), and `dec`, the guided denoiser. The project's NCSN++ (nets/ncsnpp.py) is the same U-Net; the
import renames keys and makes three exact changes of layout:
  * attention qkv rows: EDM orders them channel-major (row 3c + j, j = q, k, v); ours reads (3, C)
    blocks;
  * the class term: EDM adds Linear(sqrt(K) onehot) = sqrt(K) W[:, k] + b; ours adds E[k] + b, so
    E[k] = sqrt(K) W[:, k] (computed in fp32 as the authors' forward does) and b is the bias;
  * the FIR resampling buffers are checked to be the fixed [1,3,3,1] kernel our layers compute.

Class and w terms join the 2C-dim time features before the time MLP in both (iGCT's embedding;
nets/ncsnpp.py). The authors' eval-mode rules (docs/imports.md) are recorded in the model config:
the noiser is N = (T - t) F (`noiser_rule: authors-eval`), the denoiser the CM boundary rule the
project already uses.
"""

import math

import torch

from bcmcore.config import UserError
from bcmcore.imports import persistence


def read_snapshot(src):
    """-> (EDM state dict of IGCTPrecond, project ModelConfig dict)."""
    root = persistence.load(src)
    ema = root.get("ema") if isinstance(root, dict) else None
    if not isinstance(ema, persistence.Persistent):
        raise UserError(f"{src}: not an EDM network snapshot (no persistent 'ema' module)")
    if ema.class_name != "IGCTPrecond":
        raise UserError(f"{src}: 'ema' is a {ema.class_name}, expected an iGCT IGCTPrecond")
    kw = ema.state.get("_init_kwargs") or {}
    model_type = kw.get("model_type", "SongUNet")
    if model_type != "SongUNet":
        raise UserError(
            f"{src}: model_type {model_type!r}: only the CIFAR-10 SongUNet (NCSN++) is importable; "
            "the ImageNet-64 DhariwalUNet (adm-small) is not yet (no fixture to test it on)"
        )
    for key, want in [
        ("embedding_type", "fourier"),
        ("encoder_type", "residual"),
        ("decoder_type", "standard"),
        ("channel_mult_noise", 2),
        ("resample_filter", [1, 3, 3, 1]),
    ]:
        got = kw.get(key, want)
        if (list(got) if isinstance(want, list) else got) != want:
            raise UserError(f"{src}: SongUNet {key}={got!r}; the project's NCSN++ needs {want!r}")
    if kw.get("augment_dim", 0):
        raise UserError(
            f"{src}: SongUNet augment_dim={kw['augment_dim']}: "
            "augmentation labels are not supported"
        )
    sd = persistence.module_state_dict(ema)
    st = ema.state
    return sd, _model_config(sd, src, st)


def _model_config(sd, src, st):
    R = int(st.get("img_resolution", 32))
    conv = sd.get(f"dec.enc.{R}x{R}_conv.weight")
    if conv is None or "dec.map_w_embed.weight" not in sd:
        raise UserError(
            f"{src}: not an iGCT SongUNet snapshot (no dec.enc.{R}x{R}_conv / dec.map_w_embed)"
        )
    C = conv.shape[0]
    widths, num_blocks, attn_res, res = [], 0, [], R
    while f"dec.enc.{res}x{res}_block0.conv0.weight" in sd:
        n = 0
        while f"dec.enc.{res}x{res}_block{n}.conv0.weight" in sd:
            n += 1
        num_blocks = num_blocks or n
        if n != num_blocks:
            raise UserError(f"{src}: {n} blocks at {res}x{res} but {num_blocks} at {R}x{R}")
        widths.append(sd[f"dec.enc.{res}x{res}_block0.conv1.weight"].shape[0])
        if f"dec.enc.{res}x{res}_block0.qkv.weight" in sd:
            attn_res.append(res)
        res //= 2
    map0 = sd["dec.map_layer0.weight"]
    if map0.shape[1] != 2 * C:
        raise UserError(f"{src}: noise features {map0.shape[1]} != 2 x model_channels {C}")
    return {
        "kind": "igct",
        "net": {
            "arch": "ncsnpp",
            "data_channels": conv.shape[1],
            "resolution": R,
            "channels": C,
            "ch_mult": [w // C for w in widths],
            "num_blocks": num_blocks,
            "attn_res": attn_res,
            "dropout": float((st.get("_init_kwargs") or {}).get("dropout", 0.1)),
            "embedding": "fourier",
            "emb_mult": map0.shape[0] // C,
            "num_classes": int(st["label_dim"]),
            "progressive_input": "residual",
            "progressive": "none",
        },
        "sigma_min": float(st.get("sigma_min", 0.002)),
        "sigma_max": float(st.get("sigma_max", 80)),
        "sigma_data": float(st.get("sigma_data", 0.5)),
        "noiser_rule": "authors-eval",
    }


_BLOCK = ("norm0", "conv0", "affine:emb", "norm1", "conv1", "skip")
_ATTN = ("norm2:norm", "qkv", "proj")


def module_map(cfg):
    """[(EDM SongUNet module, project NCSNpp module, part)] for one net; part: block | attn | conv
    | norm."""
    R, nb, levels = cfg.resolution, cfg.num_blocks, len(cfg.ch_mult)
    m = [(f"enc.{R}x{R}_conv", "conv_in", "conv")]
    d = res = 0
    res = R
    for i in range(levels):
        if i > 0:
            res //= 2
            m += [(f"enc.{res}x{res}_down", f"down.{d}.0", "block")]
            m += [(f"enc.{res}x{res}_aux_residual", f"pyramid.{i - 1}", "conv")]
            d += 1
        for b in range(nb):
            m += [(f"enc.{res}x{res}_block{b}", f"down.{d}.0", "block")]
            if res in cfg.attn_res:
                m += [(f"enc.{res}x{res}_block{b}", f"down.{d}.1", "attn")]
            d += 1
    m += [(f"dec.{res}x{res}_in0", "mid.0", "block"), (f"dec.{res}x{res}_in0", "mid.1", "attn")]
    m += [(f"dec.{res}x{res}_in1", "mid.2", "block")]
    for u in range(levels):  # decoder level u, from the lowest resolution up
        if u > 0:
            lower = res
            res *= 2
            at = nb + 1 + (lower in cfg.attn_res)  # ours: the up block ends the lower level's list
            m += [(f"dec.{res}x{res}_up", f"up.{u - 1}.{at}", "block")]
        for b in range(nb + 1):
            m += [(f"dec.{res}x{res}_block{b}", f"up.{u}.{b}", "block")]
        if res in cfg.attn_res:  # EDM: attention in the level's last block only
            m += [(f"dec.{res}x{res}_block{nb}", f"up.{u}.{nb + 1}", "attn")]
    m += [
        (f"dec.{R}x{R}_aux_norm", "norm_out", "norm"),
        (f"dec.{R}x{R}_aux_conv", "conv_out", "conv"),
    ]
    return m


def _fir_ok(t):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return t.shape == (1, 1, 4, 4) and torch.equal(t[0, 0], torch.outer(k, k) / 64)


def convert_net(sd, prefix, cfg, guidance, src):
    """One SongUNet (EDM keys under `prefix`) -> project NCSNpp state dict."""
    used = {k for k in sd if k.startswith(prefix)}

    def take(key):
        full = prefix + key
        if full not in sd:
            raise UserError(f"{src}: missing tensor '{full}'")
        used.discard(full)
        return sd[full]

    out = {
        "time_embed.feat.W": take("map_noise.freqs"),
        "time_embed.mlp_t.0.weight": take("map_layer0.weight"),
        "time_embed.mlp_t.0.bias": take("map_layer0.bias"),
        "time_embed.mlp_t.2.weight": take("map_layer1.weight"),
        "time_embed.mlp_t.2.bias": take("map_layer1.bias"),
    }
    W, b = take("map_label.weight"), take("map_label.bias")
    scale = torch.ones((), dtype=torch.float32) * math.sqrt(W.shape[1])  # onehot * sqrt(K) in fp32
    out["cond.label.weight"] = (W.t() * scale).contiguous()
    out["cond.label_bias"] = b
    if guidance:
        out["cond.w_proj.weight"] = take("map_w_embed.weight")
        out["cond.w_proj.bias"] = take("map_w_embed.bias")
    for edm, ours, part in module_map(cfg):
        names = {"block": _BLOCK, "attn": _ATTN}.get(part, ("",))
        for name in names:
            e, _, o = name.partition(":")
            o = o or e
            for leaf in ("weight", "bias"):
                key = f"{edm}.{e}.{leaf}" if e else f"{edm}.{leaf}"
                if prefix + key not in sd:
                    if e == "skip":
                        continue  # identity skip (equal widths, no resampling)
                    raise UserError(f"{src}: missing tensor '{prefix + key}'")
                t = take(key)
                if e == "qkv":  # channel-major (c, j) -> (j, c)
                    C = t.shape[0] // 3
                    t = t.reshape(C, 3, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
                out[f"{ours}.{o}.{leaf}" if o else f"{ours}.{leaf}"] = t.contiguous()
    for key in sorted(used):
        if key.endswith("resample_filter") and _fir_ok(sd[key]):
            continue
        raise UserError(f"{src}: tensor '{key}' has no counterpart in the project's NCSN++")
    return out


def convert(sd, src, model):
    """EDM IGCTPrecond state dict -> IGCTModel state dict, checking every name and shape."""
    cfg = model.cfg.net
    out = {}
    for edm, ours, guided in (("enc.", "noiser_net.", False), ("dec.", "denoiser_net.", True)):
        out.update({ours + k: v for k, v in convert_net(sd, edm, cfg, guided, src).items()})
    target = model.state_dict()
    for key, value in out.items():
        if key not in target:
            raise UserError(
                f"{src}: mapped tensor '{key}' does not exist in the project's iGCT model"
            )
        if value.shape != target[key].shape:
            raise UserError(
                f"{src}: shape mismatch for '{key}': file gives {list(value.shape)}, "
                f"project expects {list(target[key].shape)}"
            )
    missing = [k for k in target if k not in out]
    if missing:
        raise UserError(f"{src}: the snapshot lacks tensors for '{missing[0]}'")
    return out
