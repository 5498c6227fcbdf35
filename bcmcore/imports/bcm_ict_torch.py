"""Mosasaur5526/BCM-iCT-torch checkpoints (ImageNet-64 iCT / BCM, `ema_<rate>_<step>.pt`) -> ADM.

The released files are bare fp32 state dicts of the authors' guided-diffusion U-Net (no config, no
wrapper): the key rename, layout and checks are imports/guided_diffusion.py's. This format adds iCT
vs BCM (the `time_embed_end` / `time_embed_align` tensors) and the authors' ADM variant (no AdaGN,
RMS-normalised q/k/v, dropout at 16 and 8); resolution and head width are not in the file and come
from the caller (released: 64 px, 64-channel heads).

The authors' evaluation, which the project's ConsistencyModel reproduces exactly (docs/imports.md):
time input 250 ln t (c_noise = ln(t)/4, times 1000 inside ADM), c_in = 1/sqrt(t^2 + sd^2), iCT with
the CM boundary scalings (Song et al. 2023 App. C), BCM with BCM Eq. 5. Weights stay fp32: the
authors' fp16 is a run-time cast of the torso in their sampler, never a property of the file.
"""

from bcmcore.config import UserError
from bcmcore.imports import guided_diffusion as gd

WHAT = "a BCM-iCT-torch"
project_key = gd.project_key  # the guided-diffusion key rename (imports/guided_diffusion.py)


def infer_model_config(sd, src, kind=None, resolution=64, head_channels=64):
    """ModelConfig dict of the project ADM that holds this state dict (what the shapes
    determine)."""
    lay = gd.layout(sd, src, WHAT)
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
    return {
        "kind": kind,
        "net": gd.adm_net(
            lay,
            resolution,
            head_channels,
            # training-only: the authors' hard-coded 0.2 at the lower levels (16 and 8 at 64 px)
            # and the middle
            dropout=0.2,
            dropout_max_res=max(resolution // 4, 1),
            two_time=kind == "bcm",
            two_time_embed="project",
            adagn=False,  # the iCT / BCM ADM: embedding added, RMS-normalised q/k/v, 250 ln t
            cosine_attention=True,
            positional_scale=1000.0,  # the authors' time_embed_end + bias-free time_embed_align
        ),
    }


def convert(sd, src, model):
    return gd.convert(sd, src, model)


def load_state_dict(src):
    """The bare state dict, read with weights_only=True (the released files need nothing else)."""
    return gd.load_state_dict(src, WHAT)
