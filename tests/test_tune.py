"""`bcm tune` and the inversion probe against flow maps with known defects.

The models are exact PF-ODE flow maps (closed form for Gaussian data, scipy for the toy mixture)
with one defect each whose effect on a schedule is known:
- `LazyBelow(tau)`: f returns its input for t < tau (no denoising, no amplification). This is what
  the demo's BCM networks do below t ~ 0.5 (docs/sampler_times.md): a zigzag round that injects
  eps_i < tau is not amplified to t_i, the decoding from t_i over-smooths, samples turn grey.
- `LongJumpBlur`: denoising jumps shrink towards the mean by a factor growing with ln(t/u)^2, so
  a two-step ancestral schedule is best with its midpoint at sqrt(T eps) (equal log-jumps).
"""

import json
import math

import numpy as np
import pytest
import torch

from bcmcore import sampling as S
from bcmcore import tune
from bcmcore.cli import main as bcm
from bcmcore.metrics.energy import energy_distance
from bcmcore.metrics.probe import data_subspace, inversion_probe
from bcmcore.metrics.spec import load_spec
from bcmcore.recipes import Recipe
from bcmcore.toy import DEMO_GMM, ExactFlowMap

EPS, T = 0.002, 80.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _full(v, x):
    v = torch.as_tensor(v, dtype=torch.float64)
    return (v.expand(x.shape[0]) if v.ndim == 0 else v).to(x.dtype)


class GaussFlow(torch.nn.Module):
    """Exact flow map of data ~ N(0, diag(s^2)) (s may be 0 in some dims: data on a subspace):
    Phi(x, t -> u) = x sqrt(s^2 + u^2) / sqrt(s^2 + t^2) per dimension."""

    kind, sigma_min, sigma_max = "bcm", EPS, T

    def __init__(self, s=(0.5, 0.5)):
        super().__init__()
        self.s = torch.as_tensor(s, dtype=torch.float64)

    def phi(self, x, t, u):
        t, u = _full(t, x)[:, None].double(), _full(u, x)[:, None].double()
        return (x.double() * torch.sqrt((self.s**2 + u**2) / (self.s**2 + t**2))).to(x.dtype)

    def forward(self, x, t, u=None, y=None):
        return self.phi(x, t, self.sigma_min if u is None else u)


class LazyBelow(GaussFlow):
    def __init__(self, tau, s=(0.5, 0.5)):
        super().__init__(s)
        self.tau = tau

    def forward(self, x, t, u=None, y=None):
        out = super().forward(x, t, u)
        return torch.where((_full(t, x) < self.tau)[:, None], x, out)


class LongJumpBlur(GaussFlow):
    kappa = 0.01

    def forward(self, x, t, u=None, y=None):
        u = self.sigma_min if u is None else u
        out = self.phi(x, t, u)
        lr = torch.log(_full(t, x) / _full(u, x)).clamp(min=0)
        return out / (1 + self.kappa * lr**2)[:, None]  # mean 0: shrinking = blurring


class LazyGMM(ExactFlowMap):
    """The toy mixture's exact flow map, lazy (identity) below tau."""

    def __init__(self, tau):
        super().__init__(DEMO_GMM)
        self.tau = tau

    def forward(self, x, t, u=None, y=None):
        out = super().forward(x, t, u, y)
        return torch.where((_full(t, x) < self.tau)[:, None], x, out)


def gauss_ref(n=2000, seed=1):
    return 0.5 * np.random.default_rng(seed).standard_normal((n, 2))


def scorer(model, ref, n=400, seed=0, shape=(2,)):
    return tune.EnergyScorer(model, ref, range(seed, seed + n), shape)


# ----------------------------------------------------------------------------------------------
# the probe: exact columns on data in a subspace
def test_probe_is_exact_on_the_flow_map_and_flags_a_lazy_model():
    s = (0.5, 0.5, 0.0, 0.0)  # data span the first 2 of 4 dimensions
    x0 = torch.as_tensor(
        np.concatenate([gauss_ref(300, 3), np.zeros((300, 2))], 1), dtype=torch.float64
    )
    basis = data_subspace(x0)
    assert basis.shape == (4, 2)
    exact = inversion_probe(GaussFlow(s), x0, ts=(0.05, 1.0), us=(2.0,), basis=basis)
    for r in exact:
        assert r["den_perp"] == pytest.approx(EPS / r["t"], abs=1e-6)
        assert r["amp_perp"] == pytest.approx(1.0, abs=1e-6)
        assert r["inv_perp"] == pytest.approx(0.0, abs=1e-6)
    lazy = {
        r["t"]: r
        for r in inversion_probe(LazyBelow(0.3, s), x0, ts=(0.05, 1.0), us=(2.0,), basis=basis)
    }
    assert lazy[0.05]["den_perp"] == pytest.approx(1.0) and lazy[0.05]["amp_perp"] == pytest.approx(
        0.05 / 2.0
    )  # the root cause, as the probe reports it: not denoised, not amplified
    assert lazy[1.0]["inv_perp"] == pytest.approx(0.0, abs=1e-6)
    # a u-blind network: f is then the Euler step of its own denoiser (BCM Eq. 5 is linear in u)
    assert lazy[0.05]["inv"] == pytest.approx(lazy[0.05]["euler"])
    assert lazy[0.05]["rel_L"] == 0.0  # and the u-use diagnostic calls it u-blind


def test_energy_distance_is_zero_for_equal_sets_and_grows_with_a_shift():
    a = gauss_ref(500, 0)
    assert energy_distance(a, a) < 1e-3
    d1, d2 = (energy_distance(a, gauss_ref(500, 1) + d) for d in (0.1, 0.5))
    assert 0 < d1 < d2


# ----------------------------------------------------------------------------------------------
# the search
def test_zigzag_on_a_lazy_model_fails_as_the_demo_did_and_the_tuner_fixes_it():
    ref = gauss_ref()
    model = LazyBelow(0.3)
    score = scorer(model, ref)
    one = score(Recipe("onestep"))[0]
    bad = Recipe("zigzag", (T, EPS), ((0.05, 1.0),))
    x, _ = S.generate(
        model, bad, S.SeededRNG(range(400)).randn((2,), torch.float64), S.SeededRNG(range(400))
    )
    assert float(x.std()) < 0.5 * 0.85  # grey: the decoding from t_i shrank un-amplified samples
    best, val, rows = tune.pattern_search(score, bad, EPS, T, budget=25)
    assert rows[0]["score"] > one + 0.02 and val < rows[0]["score"] / 4
    ((e, t),) = best.pairs
    assert e >= 0.3 or t / e < 1.2, best  # amplifies from where the model works, or does nothing
    assert len(rows) <= 25 and sum(r["best"] for r in rows) == 1


def test_ancestral_midpoint_goes_to_equal_log_jumps_and_is_deterministic():
    ref = gauss_ref()
    start = Recipe("ancestral", (T, 60.0, EPS))
    runs = [
        tune.pattern_search(scorer(LongJumpBlur(), ref), start, EPS, T, budget=30) for _ in range(2)
    ]
    (best, val, rows), (best2, val2, rows2) = runs
    assert rows == rows2 and best == best2  # same seed, same search, same table
    mid = best.times[1]
    assert 0.1 < mid < 1.6, (mid, math.sqrt(T * EPS))  # optimum sqrt(T eps) = 0.4
    assert val < 0.7 * rows[0]["score"]  # the shrink (1 + kappa ln^2)^2 is least there
    other = tune.pattern_search(scorer(LongJumpBlur(), ref, seed=7), start, EPS, T, budget=30)
    assert other[2] != rows  # another seed range: another (valid) table


def test_combined_on_the_toy_mixture_improves_a_bad_start():
    rng = np.random.default_rng(5)
    ref = DEMO_GMM.sample(1500, rng)[0]
    start = Recipe("combined", (T, 40.0, EPS), ((0.05, 2.0),))
    best, val, rows = tune.pattern_search(scorer(LazyGMM(0.3), ref, n=250), start, EPS, T, budget=8)
    assert val < 0.5 * rows[0]["score"]
    assert [r["eval"] for r in rows] == list(range(len(rows))) and len(rows) <= 8


def test_free_times_round_trip_and_feasibility():
    r = Recipe("combined", (T, 3.0, EPS), ((0.12, 0.4), (0.05, 0.2)))
    assert tune.free_times(r) == [3.0, 0.12, 0.4, 0.05, 0.2]
    assert tune.with_times(r, tune.free_times(r)).pairs == r.pairs
    assert not tune.feasible(tune.with_times(r, [3.0, 0.5, 0.4, 0.05, 0.2]), EPS, T)  # eps_i > t_i
    assert not tune.feasible(tune.with_times(r, [90.0, 0.12, 0.4, 0.05, 0.2]), EPS, T)
    with pytest.raises(Exception, match="no free times"):
        tune.pattern_search(lambda r: (0.0, 1), Recipe("ancestral", (T, EPS)), EPS, T)


# ----------------------------------------------------------------------------------------------
# the command, end to end on the toy mixture's shards
def test_bcm_tune_writes_table_recipes_and_a_spec_the_sweep_reads(tmp_path):
    from bcmcore.nets import ModelConfig, NetConfig, build_model, save_network

    shards = tmp_path / "shards"
    assert (
        bcm(
            [
                "prep",
                "gmm2d",
                "--out",
                str(shards),
                "--workers",
                "1",
                "--n-train",
                "600",
                "--n-test",
                "50",
            ]
        )
        == 0
    )
    torch.manual_seed(0)
    net = NetConfig(arch="mlp", data_channels=2, channels=16, num_blocks=1, two_time=True)
    save_network(tmp_path / "bcm.pt", build_model(ModelConfig(kind="bcm", net=net)), 3, {})
    spec = {
        "dataset": str(shards),
        "features": {"kind": "raw"},
        "num_samples": 64,
        "batch_size": 64,
        "models": [
            {
                "name": "bcm",
                "network": str(tmp_path / "bcm.pt"),
                "kind": "bcm",
                "samplers": [
                    {"recipe": "demo-nfe1"},
                    {"recipe": "demo-nfe2"},
                    {"sampler": "zigzag", "pairs": [[0.1, 1.0]], "name": "zz"},
                    {"recipe": "demo-nfe4"},
                ],
            }
        ],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "tune"
    assert (
        bcm(
            [
                "tune",
                "--spec",
                str(tmp_path / "spec.json"),
                "--out",
                str(out),
                "--budget",
                "4",
                "--no-progress",
                "--probe",
            ]
        )
        == 0
    )
    probe = (out / "probe-bcm.csv").read_text().splitlines()
    # 2-D data fill the plane: no exact columns; rel_L is empty at t = eps
    assert probe[0] == "t,u,den,inv,euler,cos,rt,ctrl,rel_L"
    u_use = (out / "u_use.csv").read_text().splitlines()
    assert u_use[0] == "model,rel_L_t0.1_u1,rel_L_t0.5_u2,rel_L_t1_u4,rel_L_max" and len(u_use) == 2
    assert len(probe) - 1 == sum(
        u > t for t in (0.002, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2) for u in (0.2, 0.4, 1, 2, 4, 8, 80)
    )
    info = json.loads((out / "tuned.json").read_text())
    assert info["seeds"] == [tune.SEED_OFFSET, tune.SEED_OFFSET + 63]
    chosen = {r["name"]: r for r in info["recipes"]["bcm"]}
    assert set(chosen) == {"demo-nfe2", "zz", "demo-nfe4"}
    assert all(r["evals"] <= 4 for r in chosen.values())
    assert all(r["score"] <= r["start_score"] for r in chosen.values())
    table = (out / "tune_table.csv").read_text().splitlines()
    # combined also starts from the tuned ancestral times + zigzag round (scored second)
    assert any(",demo-nfe4,energy,1,warm start 0,combined," in row for row in table)
    assert table[0].startswith("model,label,metric,eval") and len(table) - 1 == sum(
        r["evals"] for r in chosen.values()
    )
    tuned = load_spec(out / "tuned_spec.json")
    samplers = {s.name or s.recipe: s for s in tuned.models[0].samplers}
    assert samplers["demo-nfe1"].recipe == "demo-nfe1"  # nothing to tune: kept as given
    assert list(samplers["zz"].pairs[0]) == chosen["zz"]["pairs"][0]
    assert (
        bcm(["tune", "--spec", str(tmp_path / "spec.json"), "--out", str(out), "--model", "nope"])
        == 2
    )


def test_warm_start_from_tuned_ancestral_and_zigzag_is_scored_and_kept_when_better():
    ref = gauss_ref()
    score = scorer(LazyBelow(0.3), ref, n=200)
    start = Recipe("combined", (T, 40.0, EPS), ((0.05, 2.0),))
    warm = tune._warm_starts(
        start,
        {
            "ancestral": Recipe("ancestral", (T, 0.5, EPS)),
            "zigzag": Recipe("zigzag", (T, EPS), ((0.5, 1.0),)),
        },
    )
    assert warm == (Recipe("combined", (T, 0.5, EPS), ((0.5, 1.0),)),)
    best, val, rows = tune.pattern_search(score, start, EPS, T, budget=2, warm=warm)
    assert [r["move"] for r in rows] == ["start", "warm start 0"]
    assert best.times == (T, 0.5, EPS) and val == rows[1]["score"] < rows[0]["score"]
    assert tune._warm_starts(Recipe("combined", (T, 3.0, 1.0, EPS), ((0.1, 1.0),)), {}) == ()
