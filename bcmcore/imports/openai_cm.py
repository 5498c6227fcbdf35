"""openai/consistency_models checkpoints (`cd_imagenet64_l2.pt`, `cd_imagenet64_lpips.pt`,
`ct_imagenet64.pt`, `edm_imagenet64_ema.pt`, `cd_bedroom256_{l2,lpips}.pt`, `ct_bedroom256.pt`,
`cd_cat256_{l2,lpips}.pt`, `ct_cat256.pt`, `edm_{bedroom,cat}256_ema.pt`) -> ADM.

The files are bare fp32 state dicts of their guided-diffusion U-Net (the master weights of their
fp16 trainer): the rename and checks are imports/guided_diffusion.py's. Their ADM differs from the
BCM / iCT one only in options the project's ADM already has (docs/imports.md): plain softmax
attention (cosine_attention false), AdaGN (use_scale_shift_norm) on ImageNet-64 and not on LSUN-256,
attention at 32, 16 and 8 px, dropout everywhere (EDM teacher 0.1, CD / CT 0.0), the 1000-class
label embedding added after the time MLP. Time input 1000 * 0.25 ln(sigma) (= 1000 c_noise).

A CD / CT net and its EDM teacher have identical tensors, so the preconditioning is the caller's
(--kind) or the released file name's (cd_* / ct_* -> cm, edm_* -> edm):
  cm   c_skip = sd^2 / ((t - sigma_min)^2 + sd^2), c_out = sd (t - sigma_min) / sqrt(t^2 + sd^2)
       (CM paper App. C, their `get_scalings_for_boundary_condition`), sigma_min 0.002, sd 0.5;
  edm  c_skip = sd^2 / (t^2 + sd^2), c_out = t sd / sqrt(t^2 + sd^2) (EDM Table 1);
both with c_in = 1 / sqrt(t^2 + sd^2): the project's ConsistencyModel and EDMDenoiser.
"""

import re
from pathlib import Path

from bcmcore.config import UserError
from bcmcore.imports import guided_diffusion as gd

WHAT = "an openai consistency_models"
# their create_model's channel_mult for the default of each image size (cm/script_util.py): the
# released nets all use the default, so the widths tell the resolution
_RESOLUTION_OF_MULT = {(1, 2, 3, 4): 64, (1, 1, 2, 3, 4): 128, (1, 1, 2, 2, 4, 4): 256}
# their launch flags: EDM teachers train with dropout 0.1, CD / CT with 0.0 (scripts/launch.sh)
_DROPOUT = {"cm": 0.0, "edm": 0.1}


def kind_from_name(src):
    """cm for the released cd_* / ct_* files, edm for edm_*; None when the name does not say."""
    m = re.match(r"(cd|ct|edm)_", Path(src).name)
    return None if m is None else ("edm" if m[1] == "edm" else "cm")


def infer_model_config(sd, src, kind=None, resolution=None, head_channels=64):
    """ModelConfig dict of the project ADM that holds this state dict."""
    lay = gd.layout(sd, src, WHAT)
    if "time_embed_end.0.weight" in sd:
        raise UserError(
            f"{src}: holds a two-time (BCM) net (time_embed_end.* present): use --format "
            "bcm-ict-torch"
        )
    kind = kind or kind_from_name(src)
    if kind is None:
        raise UserError(
            f"{src}: a CD / CT net and its EDM teacher have the same tensors and the file name "
            "does not say which (cd_*, ct_*, edm_*): give --kind cm or --kind edm"
        )
    if kind not in _DROPOUT:
        raise UserError(f"--kind: openai-cm checkpoints hold cm or edm nets, got --kind {kind}")
    if resolution is None:
        resolution = _RESOLUTION_OF_MULT.get(tuple(lay["ch_mult"]))
        if resolution is None:
            raise UserError(
                f"{src}: channel multipliers {lay['ch_mult']} are not a released layout "
                "(64 px: 1,2,3,4; 256 px: 1,1,2,2,4,4): give --resolution"
            )
    return {
        "kind": kind,
        "net": gd.adm_net(
            lay,
            resolution,
            head_channels,
            dropout=_DROPOUT[kind],  # training-only
            dropout_max_res=0,  # everywhere
            two_time=False,
            adagn=lay["adagn"],
            cosine_attention=False,  # softmax(q k^T / sqrt(d)) v, as their flash / QKV paths
            positional_scale=1000.0,  # features of 1000 * 0.25 ln(sigma)
        ),
    }


def convert(sd, src, model):
    return gd.convert(sd, src, model)


def load_state_dict(src):
    """The bare state dict, read with weights_only=True (their save: `th.save(state_dict)`)."""
    return gd.load_state_dict(src, WHAT)
