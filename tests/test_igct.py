"""iGCT unit identities (docs/methods.md §7), model boundaries, loss wiring, and bad input."""

import numpy as np
import pytest
import torch
from helpers import igct_generate

from bcmcore import editing, param
from bcmcore.config import ConfigError, UserError
from bcmcore.losses import build_loss
from bcmcore.losses.dropout import shared_dropout
from bcmcore.losses.igct import guidance_prob, guided_euler_target, reconstruction_loss
from bcmcore.nets import ModelConfig, NetConfig, build_model
from bcmcore.toy import GaussianMixture


def tiny_igct(dropout=0.0, num_classes=3, dim=2):
    cfg = ModelConfig(
        kind="igct",
        net=NetConfig(
            arch="mlp",
            data_channels=dim,
            channels=16,
            num_blocks=1,
            num_classes=num_classes,
            dropout=dropout,
        ),
    )
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def pair_batch(n=8, dim=2, num_classes=3):
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(n, dim, generator=g),
        "x_src": torch.randn(n, dim, generator=g),
        "y": torch.randint(0, num_classes, (n,), generator=g),
    }


def _pairs(n=64, dim=3):
    g = torch.Generator().manual_seed(0)
    x_tar, x_src, eps = (torch.randn(n, dim, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(n, generator=g, dtype=torch.float64) * 79 + 1
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    return x_tar, x_src, eps, t, r


def test_w1_guided_target_is_conditional_ct_target():
    # docs/methods.md §7.2: w = 1 gives exactly (x_tar + t z*, x_tar + r z*), whatever image was
    # noised
    x_tar, x_src, eps, t, r = _pairs()
    x_t = x_src + t[:, None] * eps
    z_star = (x_t - x_tar) / t[:, None]
    got = guided_euler_target(x_t, x_src, x_tar, t, r, torch.ones_like(t))
    torch.testing.assert_close(got, x_tar + r[:, None] * z_star, rtol=0, atol=1e-12)
    # unguided samples (noised image = x_tar): plain CT pair x_tar + r eps for every w
    got = guided_euler_target(
        x_tar + t[:, None] * eps, x_tar, x_tar, t, r, 1 + 14 * torch.rand_like(t)
    )
    torch.testing.assert_close(got, x_tar + r[:, None] * eps, rtol=0, atol=1e-12)


def test_euler_step_sign_against_exact_flow_and_cfg():
    x_tar, x_src, eps, t, r = _pairs(n=8, dim=1)
    # the conditional PF-ODE of a point mass at x_tar is linear in t: one Euler step is its exact
    # flow map
    x_t = x_src + t[:, None] * eps
    for i in range(len(t)):
        point = GaussianMixture(((float(x_tar[i, 0]),),), (0.0,), (1.0,))
        exact = point.flow(x_t[i : i + 1].numpy(), t[i].item(), r[i].item())
        got = guided_euler_target(
            x_t[i : i + 1],
            x_src[i : i + 1],
            x_tar[i : i + 1],
            t[i : i + 1],
            r[i : i + 1],
            torch.ones(1, dtype=torch.float64),
        )
        np.testing.assert_allclose(got.numpy(), exact, rtol=1e-7, atol=1e-7)
    # w > 1 is one Euler step of the CFG ODE with D_w = x_src + w (x_tar - x_src): moves towards
    # x_tar
    w = torch.full_like(t, 7.0)
    got = guided_euler_target(x_t, x_src, x_tar, t, r, w)
    d_w = x_src + w[:, None] * (x_tar - x_src)
    torch.testing.assert_close(
        got, x_t + (r - t)[:, None] * (x_t - d_w) / t[:, None], rtol=0, atol=1e-10
    )
    shift = got - (x_tar + r[:, None] * (x_t - x_tar) / t[:, None])
    torch.testing.assert_close(
        shift, ((w - 1) * (t - r) / t)[:, None] * (x_tar - x_src), rtol=0, atol=1e-10
    )


def test_guidance_only_in_high_noise_window():
    cfg = build_loss({"kind": "igct"}, None).cfg
    p = guidance_prob(torch.tensor([0.5, 10.9, 11.0, 12.65, 14.3, 80.0]), cfg)
    torch.testing.assert_close(p, torch.tensor([0, 0, 0, 0.9 * 0.25, 0.9, 0.9]))


def test_boundaries_noiser_at_T_denoiser_at_sigma_min():
    _, model = tiny_igct()
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    assert torch.equal(model.noiser(x, model.sigma_max, y), x)  # N(x, T) = x (c_out = T - t = 0)
    torch.testing.assert_close(model.denoiser(x, model.sigma_min, y, 5.0), x, rtol=0, atol=1e-6)
    assert not torch.allclose(model.noiser(x, 1.0, y), x)  # ... but not elsewhere
    # the denoiser sees w, the noiser has no w input at all
    assert not torch.allclose(model.denoiser(x, 10.0, y, 1.0), model.denoiser(x, 10.0, y, 9.0))
    assert not hasattr(model.noiser_net.cond, "w_proj") or model.noiser_net.cond.w_proj is None


def test_reconstruction_loss_trains_both_networks():
    _, model = tiny_igct()
    b = pair_batch()
    reconstruction_loss(model, b["x"], b["y"], 0.03).mean().backward()
    for net in (model.noiser_net, model.denoiser_net):
        assert sum(p.grad.abs().sum() for p in net.parameters() if p.grad is not None) > 0


def test_online_and_target_passes_share_dropout_masks():
    _, model = tiny_igct(dropout=0.5)
    model.train()
    x, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    a, b = shared_dropout(
        lambda: model.denoiser(x, 5.0, y, 3.0), lambda: model.denoiser(x, 5.0, y, 3.0), x.device
    )
    torch.testing.assert_close(a, b)
    assert a.requires_grad and not b.requires_grad
    c = model.denoiser(x, 5.0, y, 3.0)  # a fresh pass draws different masks
    assert not torch.allclose(a, c)


def test_loss_terms_and_recon_cadence():
    cfg, model = tiny_igct()
    loss = build_loss({"kind": "igct", "recon_every": 10}, cfg)
    out = loss(model, pair_batch(), step=10, total_steps=100)
    assert {"loss", "inv", "gct", "rec"} <= set(out) and torch.isfinite(out["loss"])
    out = loss(model, pair_batch(), step=11, total_steps=100)
    assert "rec" not in out
    out["loss"].backward()  # without L_rec: L_inv trains the noiser, L_gct the denoiser
    for net in (model.noiser_net, model.denoiser_net):
        assert sum(p.grad.abs().sum() for p in net.parameters() if p.grad is not None) > 0
    assert loss.stage(0, 90) == 0 and loss.stage(89, 90) == 8  # n_stages = 9 over the run
    assert (
        build_loss({"kind": "igct", "lambda_rec_schedule": [[5, 4e-5], [9, 6e-5]]}, cfg).lambda_rec(
            7
        )
        == 4e-5
    )


class ZeroProbe(torch.nn.Module):
    """Outputs zeros: L_gct then reads off the regression target itself (a probe, not a stand-in
    model)."""

    sigma_min, sigma_max, sigma_data = 0.002, 80.0, 0.5

    def denoiser(self, x, t, y, w):
        return torch.zeros_like(x)

    def noiser(self, x, t, y):
        return torch.zeros_like(x)


@pytest.mark.parametrize("p_max", [0.0, 1.0])
def test_stage0_target_is_the_clean_image_that_was_noised(p_max):
    # stage 0: r = 0, target = y_img: x_src for guided samples (t = 12 inside the window), x_tar
    # otherwise
    cfg, _ = tiny_igct()
    loss = build_loss(
        {
            "kind": "igct",
            "P_mean": float(np.log(12.0)),
            "P_std": 1e-9,
            "guide_t_lo": 1.0,
            "guide_t_hi": 2.0,
            "guide_p_max": p_max,
            "recon_every": 1000,
        },
        cfg,
    )
    b = pair_batch(n=16)
    out = loss(ZeroProbe(), b, step=1, total_steps=100)
    img = b["x_src"] if p_max else b["x"]
    expect = ((torch.sqrt((img**2).sum(1) + 0.03**2) - 0.03) / 12.0).mean()
    torch.testing.assert_close(out["gct"], expect, rtol=1e-4, atol=0)
    assert out["guided_frac"] == p_max


class RecordingProbe(ZeroProbe):
    """Records (t, grad enabled) of every noiser call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def noiser(self, x, t, y):
        self.calls.append((t.clone(), torch.is_grad_enabled()))
        return torch.zeros_like(x)


def test_inverse_loss_swaps_levels_input_small_target_large():
    # docs/methods.md §7.3: online noiser pass at the SMALLER level max(r, t_min) with grad,
    # stop-grad target at t
    cfg, _ = tiny_igct()
    loss = build_loss({"kind": "igct", "stage_steps": 1, "recon_every": 1000}, cfg)
    probe = RecordingProbe()
    loss(probe, pair_batch(n=64), step=3, total_steps=10)  # stage 3: r = r_3(t) > 0 at large t
    (t_in, grad_in), (t_out, grad_out) = probe.calls
    assert grad_in and not grad_out
    assert (t_in <= t_out).all() and (t_in < t_out).any() and (t_in >= 0.002).all()
    torch.testing.assert_close(t_in, param.ect_r(t_out, 3).clamp_min(0.002))


def test_bad_input_one_clear_error_each():
    cfg, model = tiny_igct()
    x = torch.randn(4, 2)
    for w in (0.5, float("nan"), float("inf")):
        with pytest.raises(UserError, match="guidance weight w"):
            igct_generate(model, range(4), 0, w=w)
    with pytest.raises(UserError, match="target class must be an integer in 0..2"):
        editing.igct_edit(model, x, 0, 3, w=2.0)
    with pytest.raises(UserError, match="source class"):
        editing.igct_edit(model, x, -1, 1)
    cm = build_model(
        ModelConfig(
            kind="cm",
            net=NetConfig(arch="mlp", data_channels=2, channels=8, num_blocks=1, num_classes=3),
        )
    )
    with pytest.raises(UserError, match="has no noiser"):
        editing.edit(cm, x, 0, 1, w=2.0)
    with pytest.raises(ConfigError, match="loss.w_min"):
        build_loss({"kind": "igct", "w_min": 0.5}, cfg)
    with pytest.raises(ConfigError, match="model.kind 'igct'"):
        build_loss(
            {"kind": "igct"}, ModelConfig(kind="cm", net=NetConfig(arch="mlp", data_channels=2))
        )
    with pytest.raises(UserError, match="x_src"):
        build_loss({"kind": "igct"}, cfg)(
            model, {"x": x, "y": torch.zeros(4, dtype=torch.long)}, 0, 10
        )


def test_generate_invert_edit_shapes_nfe_and_seeds():
    _, model = tiny_igct()
    model.eval()
    x1, nfe1 = igct_generate(model, [3, 4, 5], torch.tensor([0, 1, 2]), w=4.0)
    x2, nfe2 = igct_generate(model, [5], 2, w=4.0, steps=2)
    x3, _ = igct_generate(model, [5], 2, w=4.0)
    assert (nfe1, nfe2) == (1, 2) and x1.shape == (3, 2) and x1.abs().max() <= 1
    torch.testing.assert_close(x1[2:], x3)  # sample i depends on seed i only
    z, nfe = editing.igct_invert(model, x1, [0, 1, 2])
    assert nfe == 1 and z.shape == x1.shape
    xe, nfe = editing.edit(model, x1, torch.tensor([0, 1, 2]), 1, w=3.0)
    assert nfe == 2 and xe.shape == x1.shape
    torch.testing.assert_close(
        xe,
        model.denoiser(
            model.noiser(x1, 0.002, torch.tensor([0, 1, 2])),
            80.0,
            torch.ones(3, dtype=torch.long),
            3.0,
        ).clamp(-1, 1),
    )


def _loss_and_grads(loss, model, step, total_steps):
    """Loss terms and gradients of one iGCT step from a fixed RNG state; denoiser calls counted."""
    calls = []
    denoiser = model.denoiser
    model.denoiser = lambda *a, **k: calls.append(torch.is_grad_enabled()) or denoiser(*a, **k)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out = loss(model, pair_batch(n=16), step=step, total_steps=total_steps)
    out["loss"].backward()
    del model.denoiser
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads, calls


@pytest.mark.parametrize("step", [0, 5])  # step 5 with stage_steps 1: stage 5, r > 0 at large t
def test_stage0_skips_the_denoiser_target_pass_with_identical_loss_and_gradients(step):
    """No sample has r > 0 in stage 0: the target pass is skipped; terms and gradients are bitwise
    those of running it (dropout on, so the RNG stream after the skipped pass must match too)."""
    cfg, model = tiny_igct(dropout=0.3)
    model.train()
    spec = {"kind": "igct", "stage_steps": 1, "recon_every": 1, "P_mean": 1.0}  # with L_rec
    skip, full = build_loss(spec, cfg), build_loss(spec, cfg)
    full.skip_idle_target = False
    out_s, grads_s, calls_s = _loss_and_grads(skip, model, step, 10)
    out_f, grads_f, calls_f = _loss_and_grads(full, model, step, 10)
    assert out_s.keys() == out_f.keys() and "rec" in out_s
    for k in out_s:
        assert torch.equal(out_s[k], out_f[k]), k
    assert grads_s.keys() == grads_f.keys() and len(grads_s) > 0
    for k in grads_s:
        assert torch.equal(grads_s[k], grads_f[k]), k
    # the full version runs online + target + reconstruction; the skip drops the no-grad target
    assert calls_f == [True, False, True]
    assert calls_s == ([True, True] if step == 0 else calls_f)
