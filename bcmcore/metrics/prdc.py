"""Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1-2) on feature vectors.

The manifold of a set is the union of balls around its points, each with the radius of the point's
k-th nearest neighbour within the set (k = 3). Precision = share of generated points inside the real
manifold; recall = share of real points inside the generated manifold. Distances in chunks, on any
device.
"""

import numpy as np
import torch

from bcmcore.metrics.fid import check_count


def _sq_dists(a, b):
    """Squared Euclidean distances [len(a), len(b)] (float64 norms expansion, clamped at 0)."""
    d = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)[None]
    return d.clamp_min_(0)


def kth_radii(feats, k=3, chunk=4096):
    """Squared distance of every point to its k-th nearest neighbour in the same set, itself
    excluded."""
    out = []
    for i in range(0, len(feats), chunk):
        d = _sq_dists(feats[i : i + chunk], feats)
        # the (k+1)-th smallest includes the point itself at distance 0
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(query, support, radii, chunk):
    """Share of `query` points within radius of at least one `support` point (Eq. 1's f(phi,
    Phi))."""
    inside = 0
    for i in range(0, len(query), chunk):
        d = _sq_dists(query[i : i + chunk], support)
        inside += (d <= radii[None]).any(1).sum().item()
    return inside / len(query)


@torch.no_grad()
def precision_recall(real, fake, k=3, chunk=4096, device="cpu"):
    """(precision, recall) of generated features `fake` [M, D] against real features `real` [N,
    D]."""
    real = torch.as_tensor(np.asarray(real), dtype=torch.float64, device=device)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64, device=device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"feature dimensions differ: real {real.shape[1]}, generated {fake.shape[1]}"
        )
    for n, what in ((len(real), "real features"), (len(fake), "generated features")):
        if n <= k:
            check_count(n, k, what)
    precision = _coverage(fake, real, kth_radii(real, k, chunk), chunk)
    recall = _coverage(real, fake, kth_radii(fake, k, chunk), chunk)
    return precision, recall
