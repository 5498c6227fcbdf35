"""iGCT Fig. 3 in 1-D (docs/methods.md §14): a trained iGCT MLP keeps the class mode under strong
guidance; a CFG-EDM MLP trained on the same data overshoots, like exact CFG
(tests/test_losses_edm.py: mean 3.46 at w = 13).

Data: class 0 ~ N(-2, s^2), class 1 ~ N(+2, s^2), s = 0.5. Both models: residual MLP (width 32, 2
blocks), RAdam lr 2e-3 decayed linearly to 0, batch 256, seeded; budget 2000 steps each (iGCT: 5 ECT
stages), about 100 s for the file on an idle 2-core CPU. Toy scale: sigma_data = 2 (data std ~
2.06), so the image settings are
scaled by 4: lognormal P_mean + ln 4, guidance window [44, 57.2] (docs/methods.md §14 leaves the
toy's settings open).
"""

import numpy as np
import pytest
import torch
from helpers import igct_generate
from scipy.stats import gaussian_kde

from bcmcore import editing, sampling
from bcmcore.losses import build_loss
from bcmcore.nets import ModelConfig, NetConfig, build_model

pytestmark = pytest.mark.slow
S, WS, N = 0.5, (1.0, 4.0, 7.0, 13.0), 2000


def toy_batch(n, gen):
    y = torch.randint(0, 2, (n,), generator=gen)
    return (4.0 * y - 2.0)[:, None] + S * torch.randn(n, 1, generator=gen), y


def train(kind, loss_opts, steps, batch=256, lr=2e-3, seed=0):
    """A small self-contained RAdam loop (seeded); returns the trained model in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    mc = ModelConfig(
        kind=kind,
        sigma_data=2.0,
        net=NetConfig(
            arch="mlp", data_channels=1, channels=32, emb_mult=2, num_blocks=2, num_classes=2
        ),
    )
    model, loss = build_model(mc), build_loss({"kind": kind, **loss_opts}, mc)
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1 - i / steps
    )  # linear decay: no EMA needed
    for step in range(steps):
        x, y = toy_batch(batch, gen)
        b = (
            {"x": x, "y": y, "x_src": toy_batch(batch, gen)[0]}
            if kind == "igct"
            else {"x": x, "y": y}
        )
        out = loss(model, b, step, steps)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        sched.step()
    return model.eval()


def mode(x):
    """KDE peak of 1-D samples (bandwidth 0.2 x Scott)."""
    grid = np.linspace(-1, 6, 1401)
    return grid[np.argmax(gaussian_kde(x, bw_method=0.2)(grid))]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny MLPs: threads only add overhead on a shared 2-core box
    yield
    torch.set_num_threads(n)


IGCT_TOY = {
    "P_mean": -1.1 + np.log(4),
    "inv_P_mean": -1.1 + np.log(4),
    "huber_c": 0.01,
    "guide_t_lo": 44.0,
    "guide_t_hi": 57.2,
    "n_stages": 5,
}
EDM_TOY = {"P_mean": -1.2 + np.log(4), "label_dropout": 0.2}


def test_igct_keeps_the_class_mode_under_guidance():
    model = train("igct", IGCT_TOY, steps=2000)
    y = torch.ones(N, dtype=torch.long)
    for w in WS:
        x, nfe = igct_generate(model, range(N), y, w, clamp=False)
        x = x[:, 0].numpy()
        assert nfe == 1
        assert abs(mode(x) - 2) < S, (w, mode(x))  # mode within +-s of +2
        assert np.mean(np.abs(x - 2) < 4 * S) > 0.97, (w, np.mean(np.abs(x - 2) < 4 * S))
    # class editing: invert with the source class, regenerate with the other class; lands on the
    # other side
    gen = torch.Generator().manual_seed(7)
    x, y = toy_batch(500, gen)
    x_edit, nfe = editing.igct_edit(model, x, y, 1 - y, 4.0, clamp=False)
    assert nfe == 2 and (torch.sign(x_edit[:, 0]) == 1 - 2 * y).float().mean() > 0.95


def test_cfg_edm_overshoots_like_exact_cfg():
    model = train("edm", EDM_TOY, steps=2000)
    y = torch.ones(N, dtype=torch.long)
    means, exact = (
        {},
        {1.0: 1.99, 4.0: 2.65, 7.0: 2.99, 13.0: 3.46},
    )  # exact CFG means, test_losses_edm.py
    for w in WS:
        x, _ = sampling.heun(
            model,
            80 * sampling.seeded_randn(range(N), (1,)),
            sampling.karras_times(40, model.sigma_min, model.sigma_max, zero=True),
            y,
            w,
        )
        x = x[:, 0].numpy()
        means[w] = x.mean()
    assert abs(means[1.0] - 2) < 0.1, means  # unguided: the class itself
    for w in (4.0, 7.0):
        assert abs(means[w] - exact[w]) < 0.3, means  # follows the exact CFG drift
    assert means[13.0] > means[4.0], means
    assert mode(x) > 2 + S, (means, mode(x))  # w = 13: mode outside the +-s band iGCT stays in
