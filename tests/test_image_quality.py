"""PSNR and SSIM per image on uint8 [N, C, H, W], against scikit-image and closed forms."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bcmcore.metrics.image_quality import psnr, ssim


def _pairs(channels, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (5, channels, 24, 20), dtype=np.uint8)
    noise = rng.integers(-60, 61, a.shape)
    return a, np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_and_ssim_match_scikit_image_on_random_images(channels):
    a, b = _pairs(channels)
    want_psnr = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)]
    # scikit-image's own layout: HWC with channel_axis (grey: a 2-D image)
    hwc = [(x.transpose(1, 2, 0), y.transpose(1, 2, 0)) for x, y in zip(a, b)]
    want_ssim = [
        structural_similarity(x, y, data_range=255, channel_axis=2)
        if channels == 3
        else structural_similarity(x[..., 0], y[..., 0], data_range=255)
        for x, y in hwc
    ]
    np.testing.assert_allclose(psnr(a, b), want_psnr, rtol=1e-12)
    np.testing.assert_allclose(ssim(a, b), want_ssim, rtol=1e-10)


def test_identical_images_and_constant_images_have_closed_forms():
    a, _ = _pairs(3, seed=1)
    assert np.all(psnr(a, a) == np.inf) and np.allclose(ssim(a, a), 1)
    # constant images of values p, q: zero variances, so SSIM = (2pq + C1) / (p^2 + q^2 + C1)
    p, q, c1 = 100.0, 140.0, (0.01 * 255) ** 2
    x, y = np.full((1, 1, 16, 16), p, np.uint8), np.full((1, 1, 16, 16), q, np.uint8)
    assert ssim(x, y)[0] == pytest.approx((2 * p * q + c1) / (p**2 + q**2 + c1), rel=1e-12)
    assert psnr(x, y)[0] == pytest.approx(10 * np.log10(255**2 / (q - p) ** 2), rel=1e-12)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="one shape"):
        psnr(np.zeros((1, 1, 8, 8), np.uint8), np.zeros((1, 1, 8, 9), np.uint8))
