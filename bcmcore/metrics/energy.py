"""Energy distance between two sample sets (Székely & Rizzo 2013): the tuner's metric for 2-D data.

E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'| >= 0, zero iff the distributions agree. Unlike a
Fréchet distance it sees more than two moments (a mixture's modes and gaps), and it needs no
feature network.
"""

import numpy as np
import torch


def _mean_dist(a, b, same):
    d = torch.cdist(a, b)
    if same:  # V-statistic diagonal zeros out of the mean: the U-statistic, unbiased
        n = len(a)
        return float(d.sum() / (n * (n - 1)))
    return float(d.mean())


def energy_distance(x, y):
    """Unbiased energy distance between samples x [n, d] and y [m, d] (float64)."""
    x = torch.as_tensor(np.asarray(x, np.float64))
    y = torch.as_tensor(np.asarray(y, np.float64))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(
            f"energy_distance: expected [n, d] and [m, d] with n, m >= 2, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    return 2 * _mean_dist(x, y, False) - _mean_dist(x, x, True) - _mean_dist(y, y, True)
