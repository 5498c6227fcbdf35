"""Kernel Inception Distance (Bińkowski et al. 2018, Eq. 4): the unbiased estimate of the squared
MMD between real and generated features under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3.

Unlike FID it is unbiased at small sample counts, which is why the demo and toy sets report it.
Protocol of StyleGAN2-ADA's `kid50k` and torch-fidelity: 100 random subsets of min(1000, N_real,
N_fake) points from each set; the table gives the mean and standard deviation over subsets.
"""

import numpy as np


def _poly_kernel(a, b):
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(x, y):
    """MMD^2_u of Eq. 4: the mean kernel within each set over pairs i != j, minus twice the mean
    across the sets."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kid(real, fake, num_subsets=100, subset_size=1000, seed=0):
    """(mean, std) of MMD^2_u over `num_subsets` seeded subsets of real [N, D] and generated [M, D]
    features."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"kid: feature arrays [N, D] of one D expected: {real.shape}, {fake.shape}"
        )
    m = min(len(real), len(fake), subset_size)
    if m < 2:
        raise ValueError(f"kid: at least 2 samples per set needed, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    vals = [
        mmd2_unbiased(
            real[rng.choice(len(real), m, replace=False)],
            fake[rng.choice(len(fake), m, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(vals)), float(np.std(vals))
