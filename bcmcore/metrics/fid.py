"""Fréchet distance between feature sets (Heusel et al. 2017), computed by clean-fid's own code.

FID = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) on Gaussian fits of the features;
clean-fid's `frechet_distance` (scipy sqrtm, the stabilised Sutherland version) does the matrix
part, so our numbers are clean-fid's numbers. Reference statistics of a dataset are cached next to
its shards.
"""

import json
from pathlib import Path

import numpy as np

from bcmcore.config import UserError
from bcmcore.util import atomic_path

REF_FORMAT = "bcm-fid-ref/1"


def check_count(n, dim, what):
    """A covariance of `dim` features needs more than `dim` samples, or the Gaussian fit is
    singular."""
    if n <= dim:
        raise UserError(
            f"{what}: {n} samples but the features have {dim} dimensions; FID and precision/recall "
            f"need more samples than feature dimensions (use at least {dim + 1}; papers use 50000)"
        )


def feature_stats(feats, what="features"):
    """Mean and covariance (float64, unbiased, as clean-fid's fid_from_feats) of features [N, D]."""
    feats = np.asarray(feats, np.float64)
    check_count(feats.shape[0], feats.shape[1], what)
    return feats.mean(0), np.cov(feats, rowvar=False)


class Moments:
    """Running mean and unbiased covariance of features added in chunks (shifted by the first
    chunk's mean, so float64 sums stay exact enough); equals `feature_stats` of the
    concatenation."""

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def add(self, feats):
        f = np.asarray(feats, np.float64)
        if self.shift is None:
            self.shift = f.mean(0)
            self.s1, self.s2 = np.zeros_like(self.shift), np.zeros((f.shape[1], f.shape[1]))
        d = f - self.shift
        self.n, self.s1, self.s2 = self.n + len(f), self.s1 + d.sum(0), self.s2 + d.T @ d

    def stats(self, what="features"):
        check_count(self.n, 0 if self.s1 is None else len(self.s1), what)
        return self.shift + self.s1 / self.n, (self.s2 - np.outer(self.s1, self.s1) / self.n) / (
            self.n - 1
        )


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """FID between two Gaussian fits; clean-fid's implementation, returned as a Python float."""
    from cleanfid.fid import frechet_distance  # lazy: clean-fid imports torchvision (seconds)

    return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def pr_subset(n, count, seed=0):
    """Sorted indices of the seeded subset of `count` of n reference items that precision/recall
    and KID compare against (the same draw for a dataset split and for a reference image set)."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])


def fid_from_feats(feats1, feats2):
    return frechet_distance(*feature_stats(feats1, "set 1"), *feature_stats(feats2, "set 2"))


# --------------------------------------------------------------------------------------------------
# Reference statistics: computed once per (shard dir, split, extractor), cached atomically beside
# the shards.


def reference_path(shard_dir, split, extractor_key):
    return Path(shard_dir) / f"fid-ref-{split}-{extractor_key}.npz"


def _manifest_digest(shard_dir):
    """Ties a cache file to the data it came from (a re-prepared dataset invalidates it): the
    content digest of the shards (bcmcore.shards.data_digest)."""
    from bcmcore.shards import data_digest

    return data_digest(shard_dir) or "none"


def save_reference(path, mu, sigma, pr_feats, meta):
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as f,
    ):  # a file object: np.savez would append ".npz"
        np.savez(f, mu=mu, sigma=sigma, pr_feats=pr_feats.astype(np.float32), meta=json.dumps(meta))


def load_reference(path, expect_meta):
    """Cached statistics, or None if absent or computed from other shards / another extractor."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if any(meta.get(k) != v for k, v in expect_meta.items()):
                return None
            return {"mu": z["mu"], "sigma": z["sigma"], "pr_feats": z["pr_feats"], "meta": meta}
    except (OSError, ValueError, KeyError):
        return None  # truncated or foreign file: recompute (the write is atomic, so this is rare)


def reference_stats(
    shard_dir, split, extractor, feats_fn, pr_count=50_000, seed=0, chunk=50_000, moments=True
):
    """mu/sigma of the whole split and a seeded subset of `pr_count` features for precision/recall.

    `feats_fn(images_uint8) -> features [n, D]` computes features (distributed over ranks by the
    caller), one chunk of `chunk` images at a time, so memory stays bounded on ImageNet; every rank
    calls this and gets the same statistics; only rank 0 writes the cache. `moments=False`: only the
    subset goes through the network and mu/sigma are empty (VGG16 features serve precision/recall).
    """
    from bcmcore import dist
    from bcmcore.data import iter_split
    from bcmcore.shards import ShardReader

    path = reference_path(shard_dir, split, extractor.key)
    meta = {
        "format": REF_FORMAT,
        "split": split,
        "extractor": extractor.key,
        "manifest": _manifest_digest(shard_dir),
        "pr_count": int(pr_count),
        "seed": int(seed),
        "moments": bool(moments),
    }
    ref = load_reference(path, meta)
    if ref is not None:
        return ref
    n = len(ShardReader(shard_dir, split))
    keep = pr_subset(n, pr_count, seed)
    moments_, pr, start = Moments(), [], 0
    for x, _ in iter_split(shard_dir, split, chunk):
        mine = keep[(keep >= start) & (keep < start + len(x))] - start
        if moments:
            feats = np.asarray(feats_fn(x), np.float64)
            moments_.add(feats)
            pr.append(feats[mine])
        elif len(mine):
            pr.append(np.asarray(feats_fn(x[mine]), np.float64))
        start += len(x)
    if moments:
        mu, sigma = moments_.stats(f"{shard_dir} split '{split}'")
    else:
        mu, sigma = np.zeros(0), np.zeros((0, 0))
    pr_feats = np.concatenate(pr).astype(np.float32)
    meta["n"] = int(n)
    if dist.is_main():
        save_reference(path, mu, sigma, pr_feats, meta)
    dist.barrier()
    return {"mu": mu, "sigma": sigma, "pr_feats": pr_feats, "meta": meta}
