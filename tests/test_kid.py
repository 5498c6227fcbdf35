"""KID: the unbiased MMD^2 of Bińkowski et al. (Eq. 4) with the cubic kernel, checked by a direct
double loop."""

import numpy as np
import pytest

from bcmcore.metrics.kid import kid, mmd2_unbiased


def _direct_mmd2(x, y):
    """O(n^2) loops over pairs, straight from the definition (i != j within a set)."""
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_matches_a_direct_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((25, 6)), rng.standard_normal((25, 6)) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(_direct_mmd2(x, y), rel=1e-10)
    # one subset of every point: the subset is a permutation, which MMD does not see
    mean, std = kid(x, y, num_subsets=1, subset_size=25)
    assert mean == pytest.approx(_direct_mmd2(x, y), rel=1e-10) and std == 0


def test_a_set_with_itself_is_near_zero_and_other_sets_are_not():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 16))  # subsets of one set share points: bias O(1 / len(x))
    same, _ = kid(x, x, num_subsets=20, subset_size=1000)
    far, _ = kid(x, x + 0.5, num_subsets=20, subset_size=1000)
    assert abs(same) < 0.01 * far and far > 0


def test_unbiased_where_the_plug_in_estimate_is_not():
    """Two sets drawn from one distribution: MMD^2_u averages to 0; the V-statistic (diagonals
    kept) is > 0."""
    rng = np.random.default_rng(2)
    u, v = [], []
    for _ in range(300):
        x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 4))
        u.append(mmd2_unbiased(x, y))
        kxx, kyy, kxy = ((a @ b.T / 4 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        v.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    se = np.std(u) / np.sqrt(len(u))
    assert abs(np.mean(u)) < 3 * se
    assert np.mean(v) > 10 * se


def test_subsets_are_capped_by_the_smaller_set_and_bad_input_is_refused():
    rng = np.random.default_rng(3)
    mean, _ = kid(rng.standard_normal((30, 3)), rng.standard_normal((12, 3)), num_subsets=5)
    assert np.isfinite(mean)
    with pytest.raises(ValueError, match="one D"):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))
