"""Inception Score (Salimans et al. 2016): IS = exp(E_x KL(p(y|x) || p(y))), on class probabilities.

The protocol of BCM's tables (as in the TensorFlow original and StyleGAN2-ADA's `is50k`): the
samples are cut into 10 consecutive splits, p(y) is the mean prediction within a split, and the
score is reported as the mean and standard deviation over splits. Bounds: 1 (every sample gets the
same prediction) to K (confident predictions spread evenly over the K classes).
"""

import numpy as np
from scipy.special import rel_entr


def inception_score(probs, splits=10):
    """(mean, std) of the IS over `splits` consecutive splits of class probabilities [N, K]."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise ValueError(f"inception_score: probabilities [N >= {splits}, K] expected: {p.shape}")
    if np.any(p < 0) or not np.allclose(p.sum(1), 1, atol=1e-4):
        raise ValueError("inception_score: rows must be probability vectors (softmax outputs)")
    scores = []
    for part in np.array_split(p, splits):
        # rel_entr(p, q) = p log(p / q) with 0 log 0 = 0, so confident one-hot predictions are fine
        kl = rel_entr(part, part.mean(0, keepdims=True)).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
