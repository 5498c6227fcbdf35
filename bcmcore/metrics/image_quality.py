"""Reconstruction fidelity per image: PSNR and SSIM on uint8 images [N, C, H, W] in [0, 255].

iGCT reports PSNR and scikit-image's SSIM with data range 2 on [-1, 1] images. Both metrics are
unchanged by an affine rescaling of images and data range together, so data range 255 on [0, 255]
gives the same numbers on the same pixels; we score the uint8 images a user would save (the MSE
column does the same). SSIM is scikit-image's `structural_similarity` with its defaults (Wang et al.
2004 with a 7x7 uniform window and sample covariances, channels averaged), the implementation the
iGCT authors call.
"""

import numpy as np


def _pair(x, y):
    x, y = (np.asarray(v.cpu() if hasattr(v, "cpu") else v) for v in (x, y))
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"image pairs [N, C, H, W] of one shape expected: {x.shape}, {y.shape}")
    return x.astype(np.float64), y.astype(np.float64)


def psnr(x, y, data_range=255.0):
    """Per-image PSNR [N] in dB: 10 log10(data_range^2 / MSE) (inf for identical images)."""
    x, y = _pair(x, y)
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range**2 / mse)


def ssim(x, y, data_range=255.0):
    """Per-image SSIM [N] (scikit-image defaults, mean over channels)."""
    from skimage.metrics import structural_similarity

    x, y = _pair(x, y)
    return np.array(
        [structural_similarity(a, b, data_range=data_range, channel_axis=0) for a, b in zip(x, y)]
    )
