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


def from_uint8_nhwc(a, device="cpu"):
    """uint8 NHWC (numpy or tensor) -> float32 NCHW in [-1, 1] on device."""
    return to_float(torch.as_tensor(np.asarray(a)).permute(0, 3, 1, 2)).to(device)
