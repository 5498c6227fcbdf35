"""The u-use diagnostic rel_L (bcmcore/metrics/probe.py, docs/u_use.md): 0 for a network that
ignores u, the closed-form value for an exact flow map."""

import math

import numpy as np
import pytest
import torch

from bcmcore.metrics.probe import U_USE_PAIRS, inversion_probe, u_use_summary
from bcmcore.nets import ModelConfig, NetConfig, bcm_from_cm, build_model
from bcmcore.toy import ExactFlowMap, GaussianMixture

EPS = 0.002
TS, US = (0.1, 0.5, 1.0), (1.0, 2.0, 4.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def tiny_cm():
    net = NetConfig(
        arch="adm",
        data_channels=1,
        channels=32,
        ch_mult=(1, 2),
        num_blocks=1,
        resolution=8,
        attn_res=(),
        head_channels=16,
        num_classes=3,
    )
    cm = build_model(ModelConfig(kind="cm", net=net))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random non-zero weights: the zero-initialised head would make F = 0
        for p in cm.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return cm.eval()


def digits_like(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.rand((n, 1, 8, 8), generator=g) * 2 - 1


def test_a_u_blind_network_scores_zero_and_a_u_using_one_does_not():
    # BCM's fine-tuning init ([I | 0], BCM §3.2) is a real two-time network whose F ignores u
    bcm = bcm_from_cm(tiny_cm())
    x0, y = digits_like(), torch.arange(32) % 3
    rows = inversion_probe(bcm, x0, y, ts=TS, us=US)
    assert {(r["t"], r["u"]) for r in rows} >= set(U_USE_PAIRS)
    assert max(r["rel_L"] for r in rows) < 1e-5  # exactly L up to float32 rounding
    assert all(r["inv"] > 0.05 for r in rows)  # and yet far from the flow: rel_L is not inv
    # let u reach F: the same network with the u-columns of W_align switched on
    with torch.no_grad():
        align = bcm.net.time_embed.align.weight
        d = align.shape[0]
        align[:, d:] = 0.3 * torch.randn(d, d, generator=torch.Generator().manual_seed(2))
    used = u_use_summary(inversion_probe(bcm, x0, y, ts=TS, us=US))
    assert min(used[f"rel_L_t{t:g}_u{u:g}"] for t, u in U_USE_PAIRS) > 1e-2
    assert used["rel_L_max"] >= max(used[f"rel_L_t{t:g}_u{u:g}"] for t, u in U_USE_PAIRS)


def closed_form_rel_l(mu_s, t, u, eps=EPS):
    """rel_L of the exact flow map of N(mu, s^2 I) (EDM Eq. 3 with D affine in x): Phi(x, t -> u) =
    mu + a(t, u) (x - mu), a = sqrt((s^2 + u^2) / (s^2 + t^2)). f(x_t, t, eps) and L are then
    affine in x_t - mu too, so rel_L = |a(t, u) - 1 - k| / |k| with k = (u - t)(1 - a(t, eps)) / (t
    - eps), whatever x."""
    s = mu_s

    def a(t_, u_):
        return math.sqrt((s**2 + u_**2) / (s**2 + t_**2))

    k = (u - t) * (1 - a(t, eps)) / (t - eps)
    return abs(a(t, u) - 1 - k) / abs(k)


def test_the_exact_flow_map_scores_its_closed_form_value():
    s = 0.5
    gauss = GaussianMixture(means=((0.3, -0.2),), stds=(s,), weights=(1.0,))
    x0 = torch.as_tensor(gauss.sample(64, np.random.default_rng(0))[0])
    rows = inversion_probe(ExactFlowMap(gauss), x0, ts=TS, us=US)
    for r in rows:
        assert r["rel_L"] == pytest.approx(closed_form_rel_l(s, r["t"], r["u"]), rel=1e-5)
    got = u_use_summary(rows)
    for t, u in U_USE_PAIRS:
        assert got[f"rel_L_t{t:g}_u{u:g}"] == pytest.approx(closed_form_rel_l(s, t, u), rel=1e-5)
    assert got["rel_L_max"] == pytest.approx(
        max(closed_form_rel_l(s, t, u) for t in TS for u in US if u > t), rel=1e-5
    )


def test_rel_l_is_left_out_at_t_equal_eps():
    rows = inversion_probe(
        ExactFlowMap(GaussianMixture(((0.0, 0.0),), (0.5,), (1.0,))),
        torch.zeros(4, 2, dtype=torch.float64) + 0.1,
        ts=(EPS, 0.1),
        us=(1.0,),
    )
    assert "rel_L" not in rows[0] and "rel_L" in rows[1]  # L divides by t - eps
