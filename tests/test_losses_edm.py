"""EDM loss (EDM Eq. 2 / Table 1) with label dropout, and the exact-CFG 1-D toy of iGCT Fig. 3
(docs/methods.md §14)."""

import numpy as np
import pytest
import torch

from bcmcore import editing, sampling
from bcmcore.config import ConfigError, UserError
from bcmcore.losses import build_loss
from bcmcore.metrics.edit_rate import edit_rate_table, edit_success_rate
from bcmcore.nets import ModelConfig, NetConfig
from bcmcore.toy import GaussianMixture

S = 0.5  # data width of the toy classes at -2 (class 0) and +2 (class 1)


class ExactToyDenoiser(torch.nn.Module):
    """Analytic EDM denoiser of the two-class 1-D toy: D_c = (t^2 mu_c + s^2 x)/(s^2 + t^2), D_null
    = mixture."""

    kind, sigma_min, sigma_max, sigma_data, num_classes = "edm", 0.002, 80.0, 2.0, 2

    def __init__(self, s=S):
        super().__init__()
        self.classes = [GaussianMixture(((m,),), (s,), (1.0,)) for m in (-2.0, 2.0)]
        self.marginal = GaussianMixture(((-2.0,), (2.0,)), (s, s), (0.5, 0.5))

    def forward(self, x, sigma, y):
        xs, ts, out = x.double().numpy(), sigma.double().numpy(), np.empty(tuple(x.shape))
        for label, gmm in [(-1, self.marginal), (0, self.classes[0]), (1, self.classes[1])]:
            idx = (y == label).numpy()
            if idx.any():
                out[idx] = gmm.denoise(xs[idx], ts[idx])
        return torch.as_tensor(out, dtype=x.dtype)


def cfg_samples(model, w, n, steps):
    """Class-1 samples of the CFG PF-ODE, EDM Heun along the Karras grid (T = 80, rho = 7)."""
    x_T = model.sigma_max * sampling.seeded_randn(range(n), (1,)).double()
    x, _ = sampling.heun(
        model,
        x_T,
        sampling.karras_times(steps, model.sigma_min, model.sigma_max, zero=True),
        torch.ones(n, dtype=torch.long),
        w,
    )
    return x[:, 0].numpy()


def test_exact_cfg_overshoots_the_class_mode():
    # iGCT Fig. 3 / docs/methods.md §14: exact CFG drifts the +2 mode outward; measured mean/std
    # (reference: 3.46 / 0.22 at w = 13)
    model = ExactToyDenoiser()
    expect = {1.0: (1.99, 0.50), 4.0: (2.65, 0.28), 7.0: (2.99, 0.25), 13.0: (3.46, 0.22)}
    for w, (mean, std) in expect.items():
        x = cfg_samples(model, w, 2000, 50)
        assert abs(x.mean() - mean) < 0.03 and abs(x.std() - std) < 0.03, (w, x.mean(), x.std())
    assert np.median(x) > 2 + 2 * S  # at w = 13 the mode is beyond 2 + 2s: overshoot


def test_edm_edit_is_the_exact_affine_transport():
    # For Gaussian classes the conditional PF-ODE is affine: x_t = mu + (x - mu) sqrt(s^2 + t^2)/s.
    # Editing class 1 -> class 0 at w = 1 (ODE inversion to T, ODE sampling back) is then exact in
    # closed form; same class: x back.
    model = ExactToyDenoiser()
    x = 2 + S * torch.randn(64, 1, dtype=torch.float64)
    gain = (S**2 + 80.0**2) ** 0.5 / S
    z = 2 + (x - 2) * gain
    x_edit, nfe = editing.edm_edit(model, x, 1, 0, w=1.0, steps=40, clamp=False)
    torch.testing.assert_close(x_edit, -2 + (z + 2) / gain, rtol=0, atol=2e-3)
    assert nfe == (2 * 40 - 2) + (
        2 * 40 - 1
    )  # Heun 39 steps up (78 calls), 40 down (last is Euler)
    x_rec, _ = editing.edm_edit(model, x, 1, 1, w=1.0, steps=40, clamp=False)
    torch.testing.assert_close(x_rec, x, rtol=0, atol=2e-3)
    x_cfg, nfe = editing.edit(model, x, 1, 0, w=3.0, steps=18, clamp=False)
    assert nfe == 34 + 2 * 35 and (
        x_cfg.mean() < -2
    )  # CFG doubles the sampling calls and overshoots


class Recorder(torch.nn.Module):
    """Returns its noisy input and records sigma and y: the EDM loss is then weight(sigma) ||sigma
    n||^2."""

    sigma_data = 0.5

    def forward(self, x, sigma, y):
        self.x_noisy, self.sigma, self.y = x, sigma, y
        return x


def test_edm_loss_weight_lognormal_and_label_dropout():
    mc = ModelConfig(kind="edm", net=NetConfig(arch="mlp", data_channels=3, num_classes=10))
    loss = build_loss({"kind": "edm", "label_dropout": 0.25}, mc)
    x, y = torch.randn(20000, 3), torch.randint(0, 10, (20000,))
    rec = Recorder()
    out = loss(rec, {"x": x, "y": y}, 0, 1)
    s = rec.sigma
    weight = (s**2 + 0.25) / (s * 0.5) ** 2  # lambda(sigma) = (s^2 + sd^2)/(s sd)^2
    torch.testing.assert_close(out["loss"], (weight * ((rec.x_noisy - x) ** 2).sum(1)).mean())
    assert abs(s.log().mean() + 1.2) < 0.05 and abs(s.log().std() - 1.2) < 0.05
    dropped = rec.y == -1
    assert abs(dropped.float().mean() - 0.25) < 0.02 and torch.equal(rec.y[~dropped], y[~dropped])
    # the weighted loss of the ideal denoiser of a point mass at 0 is 0 (D = x exactly recovered)
    out = loss(
        lambda xn, sigma, yy: torch.zeros_like(xn), {"x": torch.zeros(8, 3), "y": y[:8]}, 0, 1
    )
    assert out["loss"] == 0


def test_edm_bad_input():
    mc = ModelConfig(kind="edm", net=NetConfig(arch="mlp", data_channels=1, num_classes=0))
    with pytest.raises(ConfigError, match="loss.label_dropout"):
        build_loss({"kind": "edm"}, mc)
    with pytest.raises(ConfigError, match="loss.label_dropout"):
        build_loss({"kind": "edm", "label_dropout": 1.5}, None)
    model, x = ExactToyDenoiser(), torch.full((2, 1), 2.0, dtype=torch.float64)
    with pytest.raises(UserError, match="guidance weight"):
        editing.edm_edit(model, x, 1, 0, w=0.0)
    with pytest.raises(UserError, match="target class must be an integer in 0..1"):
        editing.edm_edit(model, x, 1, 2, w=2.0)


def test_edit_success_rate_counts_target_class_hits():
    # exact toy: every edit 1 -> 0 and 0 -> 1 lands on the target side (classify = sign), at w = 1
    # and with CFG
    model = ExactToyDenoiser()
    y = torch.tensor([0, 1] * 8)
    x = (4.0 * y - 2.0)[:, None].double() + S * torch.randn(16, 1, dtype=torch.float64)
    rates = edit_success_rate(model, lambda v: (v[:, 0] > 0).long(), x, y, ws=[1.0, 3.0], steps=18)
    assert rates == {1.0: 1.0, 3.0: 1.0}
    # a judge that always answers the source class scores 0
    assert edit_success_rate(model, lambda v: (v[:, 0] < 0).long(), x, y, ws=[1.0])[1.0] == 0.0
    with pytest.raises(UserError, match="guidance weight"):
        edit_rate_table("n.pt", "s", "o.csv", [0.5])
