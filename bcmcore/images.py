"""Pixels <-> model inputs, in one place: uint8 [0, 255] <-> float [-1, 1] (docs/methods.md §1), and
the PNG grid every sample, sweep and edit grid is written with.

Quantisation rounds to the nearest level and clamps, as the ADM / EDM evaluators do.
"""

import contextlib

import numpy as np
import torch

from bcmcore.util import atomic_path


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


MIN_TILE = 32  # grid tiles smaller than this are enlarged for viewing (the npz keeps the pixels)


def save_grid(path, images, ncol=None):
    """uint8 images [N, C, H, W] -> one PNG grid (1-pixel gaps), written atomically. Images under
    MIN_TILE pixels (the 8x8 demo digits) are enlarged by the smallest integer factor that reaches
    it, nearest-neighbour, so every pixel stays a sharp square."""
    from PIL import Image

    images = np.asarray(images)
    scale = -(-MIN_TILE // max(images.shape[2:]))  # ceil; 1 from MIN_TILE pixels up
    if scale > 1:
        images = images.repeat(scale, axis=2).repeat(scale, axis=3)
    n, c, h, w = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.zeros((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = (
            img.transpose(1, 2, 0)
        )
    with atomic_path(path) as tmp:
        Image.fromarray(grid[..., 0] if c == 1 else grid).save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------------
# User image files -> 8-bit RGB or grey, by what each PIL mode means (every reader of user images:
# folder prep, `bcm invert/edit --input`). PIL's own convert("RGB") clips wider modes: a 16-bit
# mid-grey 0x8000 would come out white.

WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grey (PIL may open it as 32-bit I)
ALPHA = ("RGBA", "RGBa", "LA", "PA")
PLAIN = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV")  # PIL converts these faithfully


def convert_image(img, channels=3, where="image"):
    """PIL image of any mode -> PIL image in mode "RGB" (channels=3) or "L" (channels=1).

    - 16-bit grey (I;16, I;16B, I;16L; 32-bit I when its values fit 0..65535, as PIL opens some
      16-bit files): v * 255 / 65535, rounded (0x8000 -> 128).
    - float grey (F): values must lie in [0, 1] (v * 255, rounded); anything else is refused.
    - transparency (RGBA, LA, PA, palette with a transparent colour): composited over white.
    - bilevel (1), palette, CMYK, YCbCr, HSV: PIL's conversions; grey -> RGB repeats the value,
      colour -> grey is ITU-R 601-2 luma (PIL's "L").
    Any other mode (LAB, La, ...) or out-of-range values: UserError naming `where` and the mode.
    """
    from PIL import Image

    from bcmcore.config import UserError

    mode, target = img.mode, "RGB" if channels == 3 else "L"
    if mode in WIDE_GREY or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        top = 1.0 if mode == "F" else 65535.0
        if not np.isfinite(a).all() or lo < 0 or hi > top:
            raise UserError(
                f"{where}: image mode {mode} with values {lo:g}..{hi:g}: expected 0..{top:g} "
                f"(convert it to 8- or 16-bit grey first)"
            )
        img = Image.fromarray(np.rint(a * (255 / top)).astype(np.uint8), mode="L")
    elif mode == "P" and "transparency" in img.info or mode in ALPHA:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba)
    elif mode not in PLAIN:
        raise UserError(
            f"{where}: image mode {mode} is not supported (expected one of "
            f"{', '.join(PLAIN + ALPHA + WIDE_GREY + ('F',))}): convert it to RGB first"
        )
    return img if img.mode == target else img.convert(target)


def read_image(path, channels=3):
    """An image file -> PIL image in mode "RGB" or "L" (convert_image); unreadable files and
    unsupported modes are a UserError naming the file."""
    from PIL import Image

    from bcmcore.config import UserError

    with contextlib.ExitStack() as stack:
        try:
            img = stack.enter_context(Image.open(path))
            img.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UserError(f"{path}: not a readable image ({e})") from None
        return convert_image(img, channels, where=str(path))


PIL_MODES = {1: "L", 3: "RGB"}  # a network's data channels -> the PIL mode its inputs convert to


def to_channels(image, channels, where="image"):
    """A PIL image in any mode -> uint8 HWC numpy with `channels` (1 or 3) channels, through
    convert_image (16-bit grey scaled, transparency over white, unsupported modes refused)."""
    from bcmcore.config import UserError

    if channels not in PIL_MODES:
        raise UserError(f"{where}: a network of {channels} channels takes no image files (1 or 3)")
    a = np.asarray(convert_image(image, channels, where), dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def array_to_channels(x, channels, where="images"):
    """uint8 NHWC numpy with 1, 3 or 4 channels -> `channels` channels, through `to_channels`."""
    from PIL import Image

    from bcmcore.config import UserError

    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise UserError(
            f"{where}: expected uint8 images N x H x W x C (C 1, 3 or 4), got {x.shape}"
        )
    if x.shape[-1] == channels:
        return x
    return np.stack(
        [
            to_channels(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a), channels, where)
            for a in x
        ]
    )


def check_size(x, shape, where="images"):
    """x [N, C, H, W] against a network's (C, H, W): one clear error naming the source."""
    from bcmcore.config import UserError

    if tuple(x.shape[1:]) != tuple(shape):
        c, h, w = shape
        raise UserError(
            f"{where}: the network takes {c}-channel {h}x{w} images, got {x.shape[1]}-channel "
            f"{x.shape[2]}x{x.shape[3]} (resize them to {h}x{w} first; no resampling is done here)"
        )
    return x
