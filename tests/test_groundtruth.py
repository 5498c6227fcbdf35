"""Ground truth: BCT / iCT on a 2-D Gaussian mixture whose PF-ODE flow map is known exactly.

The MLP BCM is trained with BCT on DEMO_GMM samples; 1-step generation f(x_T, T, eps) and 1-step
inversion f(x_t0, t0, T) are compared with the exact flow map Phi (toy.GaussianMixture.flow) on
fresh points. Error =
relative RMS: sqrt(mean |pred - Phi|^2) / sqrt(mean |Phi - mean(Phi)|^2) for generation (1 =
predicting the mixture mean) and / sqrt(mean |Phi|^2) for inversion (1 = predicting 0; the identity
map scores ~1 as |x| << T). Reference points printed and asserted against: the trivial baselines
above and the Euler solver of the PF ODE dx/dt = (x - D(x, t))/t with the *exact* denoiser at 1 and
2 steps (Karras grid, middle point ~2.5).
"""

import copy
import time

import numpy as np
import pytest
import torch

from bcmcore import param
from bcmcore.losses import build_loss
from bcmcore.nets import ModelConfig, NetConfig, build_model
from bcmcore.toy import DEMO_GMM

pytestmark = pytest.mark.slow
EPS, T, T0 = 0.002, 80.0, 0.5  # inversion starts at x + T0 z (BCM Alg. 5's small initial noise)
# Budget: ~2.5 CPU minutes for both trainings on one thread (width-64 residual MLP, batch 256, 3000
# steps, iCT curriculum 10 -> 160 intervals). sigma_data = 1: the mixture's per-coordinate std is
# ~0.93 / 1.02.
NET = dict(arch="mlp", data_channels=2, channels=64, emb_mult=2, num_blocks=3)
STEPS, BATCH, LR, EMA, S1, SIGMA_DATA = 3000, 256, 1e-3, 0.999, 160, 1.0
# Bounds. Measured with this budget (seeds 0/1, two P_mean): BCT generation 0.29-0.37, iCT
# generation 0.33, BCT inversion from T0 = 0.5: 0.36-0.46. References: mixture mean 1.00,
# exact-score Euler 1 step 0.99 / 2 steps 0.69 (generation); identity 0.99, Euler 1 step 0.66 / 2
# steps 0.37 (inversion). GEN_BOUND sits below the 2-step exact-score solver by a margin of ~0.2;
# INV_BOUND below the 1-step exact-score solver. 1-step inversion to T is the weakest-trained map of
# BCT (pairs with u near T carry ~1% of the lognormal mass, and their soft-term gradient is
# contracted by f(., T, eps) ~ s/T), so it does not beat 2 exact Euler steps at this budget.
GEN_BOUND, INV_BOUND = 0.5, 0.55


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):  # conftest.one_thread: tiny tensors run faster on one intra-op thread
    yield


def train(kind, loss_kind, seed=0, **options):
    """A minimal RAdam loop with an evaluation EMA (the real loop is bcmcore.train); returns the EMA
    model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mc = ModelConfig(kind=kind, net=NetConfig(**NET, two_time=kind == "bcm"), sigma_data=SIGMA_DATA)
    model = build_model(mc).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    curriculum = {"kind": "ict", "s0": 10, "s1": S1}
    loss_fn = build_loss({"kind": loss_kind, "curriculum": curriculum, **options}, mc)
    opt = torch.optim.RAdam(model.parameters(), lr=LR)
    start = time.process_time()
    for step in range(STEPS):
        x = torch.as_tensor(DEMO_GMM.sample(BATCH, rng)[0], dtype=torch.float32)
        out = loss_fn(model, {"x": x, "y": None}, step, STEPS)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - EMA)
    print(
        f"\n{loss_kind}: {STEPS} steps in {time.process_time() - start:.0f} CPU s, "
        + ", ".join(f"{k} {v.item():.3f}" for k, v in out.items())
    )
    return ema


def rel_rms(pred, exact, centre):
    ref = exact - exact.mean(0) if centre else exact
    return float(np.sqrt(((pred - exact) ** 2).sum(1).mean() / (ref**2).sum(1).mean()))


def euler(x, ts):
    """Euler steps of the PF ODE with the exact denoiser (EDM Alg. 1 without the Heun
    correction)."""
    for a, b in zip(ts[:-1], ts[1:]):
        x = x + (b - a) * (x - DEMO_GMM.denoise(x, a)) / a
    return x


@pytest.fixture(scope="module")
def exact():
    rng = np.random.default_rng(123)
    n = 2000
    x_T = T * rng.standard_normal((n, 2))
    x_t0 = DEMO_GMM.sample(n, rng)[0] + T0 * rng.standard_normal((n, 2))
    gen = DEMO_GMM.flow(x_T, T, EPS, rtol=1e-8, atol=1e-8)
    inv = DEMO_GMM.flow(x_t0, T0, T, rtol=1e-8, atol=1e-8)
    mid = float(param.karras_grid(3)[1])
    mean = np.asarray(DEMO_GMM.weights) @ np.asarray(DEMO_GMM.means)
    base = {
        "gen_mean": rel_rms(np.broadcast_to(mean, gen.shape), gen, True),
        "gen_euler1": rel_rms(euler(x_T, [T, EPS]), gen, True),
        "gen_euler2": rel_rms(euler(x_T, [T, mid, EPS]), gen, True),
        "inv_identity": rel_rms(x_t0, inv, False),
        "inv_euler1": rel_rms(euler(x_t0, [T0, T]), inv, False),
        "inv_euler2": rel_rms(euler(x_t0, [T0, mid, T]), inv, False),
    }
    print(
        "\nbaselines (relative RMS error vs exact flow map):",
        {k: round(v, 3) for k, v in base.items()},
    )
    return {"x_T": x_T, "x_t0": x_t0, "gen": gen, "inv": inv, "base": base}


def one_step(model, x, t, u):
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32), t, u).double().numpy()


def test_bct_one_step_generation_and_inversion_match_exact_flow(exact):
    model = train("bcm", "bct")
    gen = rel_rms(one_step(model, exact["x_T"], T, EPS), exact["gen"], True)
    inv = rel_rms(one_step(model, exact["x_t0"], T0, T), exact["inv"], False)
    # A network that ignores u inverts by the Euler step of its own denoiser (BCM Eq. 5 is linear
    # in u and exact at u = eps, t), which is what the demo networks did (docs/sampler_times.md):
    # the trained inversion must beat that step (measured 0.40 vs 0.77 at this budget).
    d = one_step(model, exact["x_t0"], T0, EPS)
    own_euler = rel_rms(d + T * (exact["x_t0"] - d) / T0, exact["inv"], False)
    print(f"BCT 1-step generation {gen:.3f}, inversion {inv:.3f} (own Euler {own_euler:.3f})")
    b = exact["base"]
    assert gen < GEN_BOUND < b["gen_euler2"] < b["gen_euler1"] < 1.05
    assert inv < INV_BOUND < b["inv_euler1"] < b["inv_identity"]
    assert inv < own_euler - 0.2


def test_bct_with_targets_at_T_inverts_better_than_two_exact_euler_steps(exact):
    # loss.u_T_prob = 0.1: a tenth of the trajectory-term targets at u = T, which the authors' law
    # never draws. Measured at this budget (seed 0): inversion 0.404 -> 0.164, 1-step generation
    # 0.314 -> 0.350 (docs/sampler_times.md, section 4).
    model = train("bcm", "bct", u_T_prob=0.1)
    gen = rel_rms(one_step(model, exact["x_T"], T, EPS), exact["gen"], True)
    inv = rel_rms(one_step(model, exact["x_t0"], T0, T), exact["inv"], False)
    print(f"BCT u_T_prob 0.1: 1-step generation {gen:.3f}, inversion {inv:.3f}")
    assert gen < GEN_BOUND
    assert inv < 0.3 < exact["base"]["inv_euler2"]


def test_ict_one_step_generation_matches_exact_flow(exact):
    model = train("cm", "ict")
    gen = rel_rms(one_step(model, exact["x_T"], T, None), exact["gen"], True)
    print(f"iCT 1-step generation {gen:.3f}")
    assert gen < GEN_BOUND < exact["base"]["gen_euler2"]
