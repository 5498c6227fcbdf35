"""The 1-step plateau study on the analytic 2-D mixture (docs/sampler_times.md, section 4).

One training run per call, in the setup of tests/test_groundtruth.py: width-64 residual MLP, batch
256, RAdam lr 1e-3, EMA 0.999, iCT curriculum 10 -> s1 intervals, sigma_data 1. It reports path
errors against the exact flow map (relative RMS, as in that test) and sliced Wasserstein distances
to fresh data, for the EMA and the online weights:

    python -m bcmcore.bench.toy_study NAME KIND LOSS STEPS ['{"huber_c": 0.1, ...}'] >> table.jsonl

KIND cm|bcm; LOSS ict|bct|cd|bcd. `cd` / `bcd` are (bidirectional) consistency distillation
(bcmcore/losses/cd.py) with the mixture's exact denoiser as the teacher: the control that removes
CT's one-sample target. Options: seed, lr, ema, s1, huber_c, lr_decay (linear to 2 %), u_T_prob
(BCT, BCD); for cd / bcd also metric, num_points, target_ema, weighting (their loss config).
"""

import copy
import json
import sys
import time

import numpy as np
import torch

from bcmcore import param
from bcmcore.config import from_dict
from bcmcore.losses import build_loss, get_loss_class
from bcmcore.nets import ModelConfig, NetConfig, build_model
from bcmcore.toy import DEMO_GMM, ExactDenoiser

EPS, T, T0 = 0.002, 80.0, 0.5
NET = dict(arch="mlp", data_channels=2, channels=64, emb_mult=2, num_blocks=3)


def train(
    kind,
    loss,
    steps,
    seed=0,
    lr=1e-3,
    ema=0.999,
    s1=160,
    huber_c=None,
    lr_decay=False,
    u_T_prob=None,
    **distill,
):
    """-> (EMA model, online model). `distill`: further loss keys of cd / bcd."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mc = ModelConfig(kind=kind, net=NetConfig(**NET, two_time=kind == "bcm"), sigma_data=1.0)
    model = build_model(mc).train()
    avg = copy.deepcopy(model).eval().requires_grad_(False)
    cfg = {"huber_c": huber_c}
    if u_T_prob is not None:
        cfg["u_T_prob"] = u_T_prob
    if loss in ("cd", "bcd"):  # the exact denoiser as the teacher
        cls = get_loss_class(loss)
        options = from_dict(cls.Config, {**cfg, **distill}, "loss")
        loss_fn = cls(options, mc, ExactDenoiser(DEMO_GMM))
        loss_fn.prepare(model)
    else:
        cfg["curriculum"] = {"kind": "ict", "s0": 10, "s1": s1}
        loss_fn = build_loss({"kind": loss, **cfg}, mc)
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    for step in range(steps):
        if lr_decay:
            for g in opt.param_groups:
                g["lr"] = lr * max(0.02, 1 - step / steps)
        x = torch.as_tensor(DEMO_GMM.sample(256, rng)[0], dtype=torch.float32)
        out = loss_fn(model, {"x": x, "y": None}, step, steps)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if hasattr(loss_fn, "after_step"):
            loss_fn.after_step(model)  # CD's target theta-
        with torch.no_grad():
            for p_avg, p in zip(avg.parameters(), model.parameters()):
                p_avg.lerp_(p, 1 - ema)
    return avg, model.eval()


def rel_rms(pred, exact, centre):
    ref = exact - exact.mean(0) if centre else exact
    return float(np.sqrt(((pred - exact) ** 2).sum(1).mean() / (ref**2).sum(1).mean()))


def sliced_wasserstein(a, b, n_proj=256, seed=0):
    """W2 between equal-size point sets, averaged over random 1-D projections."""
    th = np.random.default_rng(seed).uniform(0, np.pi, n_proj)
    proj = np.stack([np.cos(th), np.sin(th)], 1)
    pa, pb = np.sort(a @ proj.T, 0), np.sort(b @ proj.T, 0)
    return float(np.sqrt(((pa - pb) ** 2).mean()))


def references(n=2000):
    """The test's fixed draws (seed 123) and exact flows, plus fresh data for the distances."""
    rng = np.random.default_rng(123)
    x_T = T * rng.standard_normal((n, 2))
    x_t0 = DEMO_GMM.sample(n, rng)[0] + T0 * rng.standard_normal((n, 2))
    return {
        "x_T": x_T,
        "x_t0": x_t0,
        "gen": DEMO_GMM.flow(x_T, T, EPS, rtol=1e-8, atol=1e-8),
        "inv": DEMO_GMM.flow(x_t0, T0, T, rtol=1e-8, atol=1e-8),
        "data": DEMO_GMM.sample(n, np.random.default_rng(9))[0],
    }


@torch.no_grad()
def evaluate(model, ref):
    """gen1 / gen2 (ancestral via the Karras midpoint) / inv (t0 = 0.5 -> T) path errors, the
    same inversion by the Euler step of the model's own denoiser, and sliced W2 of gen1 / gen2."""

    def f(x, t, u=None):
        return model(torch.as_tensor(x, dtype=torch.float32), t, u).double().numpy()

    mid = float(param.karras_grid(3)[1])
    g1 = f(ref["x_T"], T, None if model.kind == "cm" else EPS)
    r = {"gen1": rel_rms(g1, ref["gen"], True)}
    if model.kind == "cm":  # CM 2-step re-noises with fresh noise: off the path, distances only
        z = np.random.default_rng(4).standard_normal(g1.shape)
        g2 = f(g1 + np.sqrt(mid**2 - EPS**2) * z, mid)
    else:
        g2 = f(f(ref["x_T"], T, mid), mid, EPS)
        d = f(ref["x_t0"], T0, EPS)
        r.update(
            gen2=rel_rms(g2, ref["gen"], True),
            inv=rel_rms(f(ref["x_t0"], T0, T), ref["inv"], False),
            inv_own_euler=rel_rms(d + T * (ref["x_t0"] - d) / T0, ref["inv"], False),
        )
    r.update(swd1=sliced_wasserstein(g1, ref["data"]), swd2=sliced_wasserstein(g2, ref["data"]))
    return r


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    name, kind, loss, steps = argv[0], argv[1], argv[2], int(argv[3])
    options = json.loads(argv[4]) if len(argv) > 4 else {}
    start = time.process_time()
    avg, online = train(kind, loss, steps, **options)
    ref = references()
    row = {"name": name, "kind": kind, "loss": loss, "steps": steps, **options}
    row.update({k: round(v, 4) for k, v in evaluate(avg, ref).items()})
    online_row = evaluate(online, ref)
    row.update({f"online_{k}": round(online_row[k], 4) for k in ("gen1", "inv") if k in online_row})
    row["cpu_s"] = round(time.process_time() - start)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
