"""The one scoring path of `bcm eval`: features of uint8 images through the protocol's network,
computed in shards across ranks, then FID / precision-recall / KID / IS against a reference.

The sweep (its generated samples) and `bcm eval --images` (any set of images) both come through
here, so one set of images scored under one protocol gives one number, to the last bit.
"""

import numpy as np

from bcmcore import dist
from bcmcore.metrics import fid as fidlib
from bcmcore.metrics import prdc
from bcmcore.metrics.inception_score import inception_score
from bcmcore.metrics.kid import kid

METRICS = ("fid", "pr", "kid", "is")  # `--metrics` names: pr = precision and recall


def gather_rows(local, local_idx, total):
    """All-gather per-rank rows [n_r, D] with global indices -> [total, D] float32, in order."""
    local = np.asarray(local, np.float32)  # the same rounding in one process and in many
    return dist.gather_rows(local.reshape(len(local_idx), -1), local_idx, total).astype(np.float32)


def sharded_features(x, features_fn):
    """Features of a whole array x [N, ...]: rank r computes items r, r + world, ... with
    `features_fn(items) -> [n_r, D]` (the same items, in the same batches, as the sweep's rank r
    generates for seeds r, r + world, ...); all ranks get [N, D] float64 (rounded via float32,
    as generated samples' features are)."""
    idx = np.arange(dist.rank(), len(x), dist.world_size())
    return gather_rows(features_fn(x[idx]), idx, len(x)).astype(np.float64)


def score(feats, ref, spec, extractor=None, key="", device="cpu", metrics=METRICS, what=None):
    """Scores of features [N, D] against `ref` {mu, sigma, pr_feats (None: statistics only)}.

    FID (Heusel et al. 2017) against ref mu/sigma; precision/recall (Kynkaanniemi et al. 2019,
    k = spec.pr_k) and KID (Binkowski et al. 2018, Eq. 4) against ref pr_feats; IS (Salimans et
    al. 2016) from the extractor's own classifier layer, needing no reference. `metrics` picks
    among METRICS; the row's `features` names the extractor.
    """
    what = what or "generated samples"
    s = {}
    if "fid" in metrics:
        mu, sigma = fidlib.feature_stats(feats, what)
        s["fid"] = fidlib.frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    if "pr" in metrics:
        s["precision"], s["recall"] = prdc.precision_recall(
            ref["pr_feats"], feats, k=spec.pr_k, device=device
        )
    if "kid" in metrics:
        s["kid"], s["kid_std"] = kid(ref["pr_feats"], feats, spec.kid_subsets, spec.kid_subset_size)
    if "is" in metrics and extractor is not None and extractor.logits is not None:
        s["is"], s["is_std"] = inception_score(extractor.class_probs(feats), spec.is_splits)
    s["features"] = key
    return s
