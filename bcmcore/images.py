"""Pixels <-> model inputs, in one place: uint8 [0, 255] <-> float [-1, 1] (docs/methods.md §1).

Quantisation rounds to the nearest level and clamps, as the ADM / EDM evaluators do.
"""

import numpy as np
import torch


def to_float(x):
    """uint8 images (any layout; tensor or array) -> float32 in [-1, 1]. Anything else (toy
    vectors, images already in [-1, 1]) -> float32 unchanged."""
    x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    return x.to(torch.float32).div_(127.5).sub_(1) if x.dtype == torch.uint8 else x.float()


def to_uint8(x):
    """float [-1, 1] -> uint8 tensor of the same layout, on the CPU (the only quantisation)."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_uint8_nhwc(x):
    """float [-1, 1] NCHW -> uint8 NHWC numpy, the layout image files and .npz batches store."""
    return to_uint8(x).permute(0, 2, 3, 1).numpy()


def require_uint8_nhwc(a, where):
    """`a` if it holds uint8 NHWC pixels (C = 1 or 3), else one UserError naming `where`: float
    pixels read as uint8 would be silently wrong (values in [0, 1] become near-black)."""
    from bcmcore.config import UserError

    dtype = getattr(a, "dtype", None)
    if str(dtype) not in ("uint8", "torch.uint8"):
        raise UserError(
            f"{where}: expected uint8 pixels 0..255, got dtype {dtype} (convert floats in [0, 1] "
            "with (x * 255).round().astype('uint8'))"
        )
    if len(a.shape) != 4 or a.shape[-1] not in (1, 3):
        raise UserError(
            f"{where}: expected images N x H x W x C (C = 1 or 3), got shape {tuple(a.shape)}"
        )
    return a


def from_uint8_nhwc(a, device="cpu"):
    """uint8 NHWC (numpy or tensor) -> float32 NCHW in [-1, 1] on device."""
    return to_float(torch.as_tensor(np.asarray(a)).permute(0, 3, 1, 2)).to(device)
