"""Ground-truth tests of bcmcore.param: grids, curriculum, noise-level weights and every
parameterisation."""

import math

import pytest
import torch
from scipy.stats import norm

from bcmcore import param

EPS, SD = param.SIGMA_MIN, param.SIGMA_DATA


def rand_t(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    # log-uniform over [eps, T], plus the endpoints
    t = torch.exp(torch.empty(n).uniform_(math.log(EPS), math.log(param.SIGMA_MAX), generator=g))
    return torch.cat([t, torch.tensor([EPS, param.SIGMA_MAX])])


# ----------------------------------------------------------------------------------------------
# grids


@pytest.mark.parametrize("n", [2, 11, 1281])
def test_karras_grid_endpoints_and_formula(n):
    g = param.karras_grid(n)
    assert len(g) == n and g[0].item() == EPS and g[-1].item() == param.SIGMA_MAX
    assert bool((g[1:] > g[:-1]).all())
    i = torch.arange(n, dtype=torch.float64)
    ref = (EPS ** (1 / 7) + i / (n - 1) * (80 ** (1 / 7) - EPS ** (1 / 7))) ** 7  # EDM Eq. 5
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=0)
    with pytest.raises(ValueError):
        param.karras_grid(1)


def test_lognormal_interval_mass_matches_scipy():
    g = param.karras_grid(41)
    p = param.lognormal_interval_mass(g)
    assert p.shape == (40,) and bool((p > 0).all())
    assert abs(p.sum().item() - 1) < 1e-12
    cdf = norm.cdf((g.log().numpy() - param.P_MEAN) / param.P_STD)  # ln t ~ N(-1.1, 2^2) (iCT §3.5)
    ref = torch.tensor(cdf[1:] - cdf[:-1])
    torch.testing.assert_close(p, ref / ref.sum(), rtol=1e-9, atol=1e-12)
    # the mode of ln t is at -1.1, i.e. t ~ 0.33: the heaviest interval must contain it
    k = int(p.argmax())
    assert g[k] <= math.exp(-1.1) * 1.6 and g[k + 1] >= math.exp(-1.1) / 1.6


# ----------------------------------------------------------------------------------------------
# curricula


def test_ict_curriculum_eight_equal_stages():
    K = 400_000
    Kp = K // 8  # K' = floor(K / (floor(log2(1280/10)) + 1)) = K/8 (iCT Eq. 8)
    stages = [param.ict_num_points(s * Kp, K) for s in range(8)]
    assert stages == [11, 21, 41, 81, 161, 321, 641, 1281]
    for s in range(8):  # constant within a stage
        assert param.ict_num_points(s * Kp + Kp - 1, K) == stages[s]
    assert param.ict_num_points(K - 1, K) == 1281 and param.ict_num_points(10 * K, K) == 1281


def test_phased_curriculum_bcm_finetune():
    # BCM ImageNet-64 fine-tuning (docs/methods.md §6)
    phases = [(210_000, 320), (16_000, 640), (8_000, 1280)]
    assert param.phased_num_points(0, phases) == 321
    assert param.phased_num_points(209_999, phases) == 321
    assert param.phased_num_points(210_000, phases) == 641
    assert param.phased_num_points(225_999, phases) == 641
    assert param.phased_num_points(226_000, phases) == 1281
    assert param.phased_num_points(10**7, phases) == 1281  # last phase extends forever
    lsun = [
        (75_000, 10),
        (75_000, 20),
        (60_000, 40),
        (60_000, 80),
        (45_000, 160),
        (45_000, 320),
        (30_000, 640),
        (30_000, 1280),
    ]
    assert sum(n for n, _ in lsun) == 420_000
    assert param.phased_num_points(150_000, lsun) == 41


# ----------------------------------------------------------------------------------------------
# scalings


def test_cm_boundary_exact():
    c_skip, c_out = param.cm_scalings(torch.tensor([EPS]))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0  # f(x, eps) = x (CM App. C)


def test_bcm_identity_exact_for_random_t():
    t = rand_t()
    c_skip, c_out = param.bcm_scalings(t, t.clone())
    assert bool((c_out == 0).all())  # exactly, so f(x, t, t) = x bitwise (BCM Eq. 45)
    assert (c_skip - 1).abs().max().item() <= 2 * torch.finfo(torch.float32).eps


def test_bcm_c_out_sign_and_magnitude():
    t, u = torch.tensor([0.07, 1.0, 5.0]), torch.tensor([80.0, 0.5, 80.0])
    _, c_out = param.bcm_scalings(t, u)
    assert (
        c_out[0] < 0 and c_out[1] > 0 and c_out[2] < 0
    )  # c_out ~ (t - u): negative when inverting
    c_skip, c_out = param.bcm_scalings(torch.tensor(0.07), torch.tensor(80.0))
    assert (
        abs(c_skip.item() - 23.0) < 0.1 and abs(c_out.item() + 79.2) < 0.1
    )  # docs/methods.md §2 long inverse jump


def test_bcm_scalings_solve_the_unit_variance_derivation():
    """App. D: c_out^2 = (1-c_skip)^2 sd^2 + (u - c_skip t)^2, and c_skip minimises it."""
    g = torch.Generator().manual_seed(1)
    t = torch.exp(torch.empty(2000, dtype=torch.float64).uniform_(-6, 4.4, generator=g))
    u = torch.exp(torch.empty(2000, dtype=torch.float64).uniform_(-6, 4.4, generator=g))
    c_skip, c_out = param.bcm_scalings(t, u)

    def var(cs):
        return (1 - cs) ** 2 * SD**2 + (u - cs * t) ** 2

    torch.testing.assert_close(c_out**2, var(c_skip), rtol=1e-10, atol=1e-12)
    h = 1e-4 * (1 + c_skip.abs())
    assert bool((var(c_skip + h) >= var(c_skip)).all() and (var(c_skip - h) >= var(c_skip)).all())


def test_bcm_reduces_to_cm_at_u_eps_to_first_order():
    t = rand_t().double()
    cs_b, co_b = param.bcm_scalings(t, torch.full_like(t, EPS))
    cs_c, co_c = param.cm_scalings(t)
    torch.testing.assert_close(co_b, co_c, rtol=1e-12, atol=0)  # c_out identical
    diff = cs_b - cs_c
    # d/d eps of (c_skip_bcm - c_skip_cm) at eps = 0 is t (t^2 - sd^2) / (t^2 + sd^2)^2 (BCM App. D)
    slope = t * (t**2 - SD**2) / (t**2 + SD**2) ** 2
    torch.testing.assert_close(diff, EPS * slope, rtol=0, atol=4 * EPS**2 / SD**2)  # + O(eps^2)
    assert diff.abs().max().item() <= 0.6 * EPS  # max |slope| = 1/(4 sd) = 0.5: O(sigma_min)
    assert diff.abs().max().item() > 0.4 * EPS  # ... and not zero (the formulas do differ)


def test_edm_scalings_and_c_in():
    s = rand_t().double()
    c_skip, c_out = param.edm_scalings(s)
    torch.testing.assert_close(c_skip * (s**2 + SD**2), torch.full_like(s, SD**2))
    # unit-variance target of EDM Table 1: c_out^2 = c_skip s^2 (since (1-c_skip)^2 sd^2 + c_skip^2
    # s^2 = c_out^2)
    torch.testing.assert_close(c_out**2, (1 - c_skip) ** 2 * SD**2 + c_skip**2 * s**2)
    torch.testing.assert_close(param.c_in(s) ** 2 * (s**2 + SD**2), torch.ones_like(s))


def test_c_noise_values():
    c = param.c_noise(torch.tensor([80.0, EPS]))
    torch.testing.assert_close(1000 * c, torch.tensor([250 * math.log(80), 250 * math.log(EPS)]))
    assert abs(1000 * c[0].item() - 1095.5) < 0.1 and abs(1000 * c[1].item() + 1553.7) < 0.1
    assert torch.isfinite(param.c_noise(torch.tensor([0.0]))).all()  # ln 0 guarded


def test_igct_noiser_boundary():
    c_skip, c_out = param.igct_noiser_scalings(torch.tensor([80.0, 1.0]))
    assert c_out[0].item() == 0.0 and c_skip[0].item() == 1.0 and c_out[1].item() == 79.0


def test_pseudo_huber():
    c = param.huber_c(3 * 32 * 32)
    assert abs(c - 0.0299) < 1e-3 and abs(param.huber_c(3 * 64 * 64) - 0.0599) < 1e-3
    a = torch.randn(3, 3, 8, 8)
    assert param.pseudo_huber(a, a, c).abs().max().item() == 0
    b = a + 10
    d = (a - b).flatten(1).norm(dim=1)
    torch.testing.assert_close(param.pseudo_huber(a, b, c), torch.sqrt(d**2 + c**2) - c)
    torch.testing.assert_close(
        d - param.pseudo_huber(a, b, c), torch.full_like(d, c), atol=1e-3, rtol=0
    )  # ~L2 - c
    small = a + 1e-4
    ds = (small - a).flatten(1).norm(dim=1).double()
    torch.testing.assert_close(
        param.pseudo_huber(a, small, c).double(), ds**2 / (2 * c), rtol=2e-2, atol=0
    )  # ~L2^2/2c


def test_ect_r():
    t = torch.tensor([0.5, 2.0, 80.0])
    r = param.ect_r(t, stage=3)
    ref = t * (1 - 2.0**-3 * (1 + 8 * torch.sigmoid(-t)))
    torch.testing.assert_close(r, ref.clamp_min(0))
    assert bool((r < t).all() and (r >= 0).all())
    assert param.ect_r(torch.tensor([0.01]), stage=0).item() == 0.0  # stage 0 near 0: clamped at 0
