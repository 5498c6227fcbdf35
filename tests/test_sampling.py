"""Samplers against exact flow maps: the 2-D Gaussian mixture (scipy) and a Gaussian (closed form,
cheap)."""

import math

import pytest
import torch
from helpers import (
    EPS,
    Counted,
    GaussDenoiser,
    GaussFlow,
    GMMDenoiser,
    T,
    ZeroRNG,
    flow,
    gmm_points,
)

from bcmcore import recipes as R
from bcmcore import sampling as S
from bcmcore.config import UserError
from bcmcore.toy import DEMO_GMM, ExactFlowMap


# ----------------------------------------------------------------------------------------------
# seeds
def test_seeded_randn_rows_depend_only_on_their_seed():
    z = S.seeded_randn([3, 5, 7], (2, 4), "cpu")
    assert z.shape == (3, 2, 4)
    assert torch.equal(z[1], S.seeded_randn([5], (2, 4))[0])
    assert torch.equal(
        z[1],
        torch.randn(
            (2, 4), generator=torch.Generator().manual_seed(5), dtype=torch.float64
        ).float(),
    )
    assert not torch.equal(z[0], z[1])


# ----------------------------------------------------------------------------------------------
# ground truth (GMM)
def test_onestep_is_the_exact_flow_map():
    _, z = gmm_points()
    x, nfe = S.onestep(ExactFlowMap(DEMO_GMM), T * z)
    assert nfe == 1
    torch.testing.assert_close(x, flow(T * z, T, EPS), rtol=0, atol=1e-7)


@pytest.mark.parametrize("times", [[T, 2.4, EPS], [T, 10.0, 1.0, 0.1, EPS], [T, 79.0, 0.003, EPS]])
def test_ancestral_over_any_schedule_equals_onestep(times):
    _, z = gmm_points()
    x, nfe = S.ancestral(ExactFlowMap(DEMO_GMM), T * z, times)  # BCM Alg. 2
    assert nfe == len(times) - 1
    torch.testing.assert_close(x, flow(T * z, T, EPS), rtol=0, atol=1e-6)


def test_zigzag_and_combined_match_the_exact_answer():
    pairs = [(0.1, 1.2), (0.05, 0.4)]
    for times in ([T, EPS], [T, 3.0, EPS]):
        rng, z = gmm_points(8)
        model = ExactFlowMap(DEMO_GMM)
        x, nfe = S.combined(
            model, T * z, times, pairs, rng
        )  # BCM Alg. 4 (Alg. 3 when times = [T, eps])
        assert nfe == len(times) - 1 + 2 * len(pairs)
        ref_rng, z_ref = gmm_points(8)
        ref = flow(T * z_ref, T, EPS)
        for (
            e,
            t,
        ) in (
            pairs
        ):  # Eq. 11: inject e*z at level e and let the flow carry it to t, then back to eps
            ref = flow(flow(ref + e * ref_rng.randn((2,), dtype=torch.float64), e, t), t, EPS)
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)


def test_zigzag_with_zero_added_noise_equals_onestep():
    _, z = gmm_points(8)
    model = ExactFlowMap(DEMO_GMM)
    x, nfe = S.zigzag(model, T * z, [(EPS, 1.2), (EPS, 0.3)], ZeroRNG())
    assert nfe == 5
    torch.testing.assert_close(x, flow(T * z, T, EPS), rtol=0, atol=1e-6)


def test_cm_multistep_matches_the_exact_answer():
    taus = [T, 0.7, 0.2]
    rng, z = gmm_points(8)
    model = ExactFlowMap(DEMO_GMM)
    model.kind = "cm"  # CM Alg. 1 needs only f(x, t) -> eps
    x, nfe = S.cm_multistep(model, T * z, taus, rng)
    assert nfe == 3
    ref_rng, z_ref = gmm_points(8)
    ref = flow(T * z_ref, T, EPS)
    for tau in taus[1:]:  # re-noise with sqrt(tau^2 - eps^2) z, map back to eps
        ref = flow(
            ref + math.sqrt(tau**2 - EPS**2) * ref_rng.randn((2,), dtype=torch.float64), tau, EPS
        )
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)


def test_heun_on_the_exact_denoiser_converges_to_the_flow_map():
    _, z = gmm_points(32)
    ref = flow(T * z, T, EPS)
    errs = []
    for n in (16, 64, 256):
        x, nfe = S.heun(
            GMMDenoiser(), T * z, S.karras_times(n, EPS, T)
        )  # EDM Alg. 1, no final zero
        assert nfe == 2 * (n - 1)
        errs.append((x - ref).abs().max().item())
    assert errs[0] > 4 * errs[1] > 16 * errs[2] / 2 and errs[2] < 5e-4, errs  # ~2nd order
    x, nfe = S.heun(
        GMMDenoiser(), T * z, S.karras_times(256, EPS, T, zero=True)
    )  # last step Euler to 0
    assert nfe == 2 * 256 - 1 and (x - ref).abs().max() < 5e-3


def test_heun_passes_labels_and_guidance_follows_the_paper_convention():
    _, z = gmm_points(8)
    y = torch.full((8,), 2)
    x, _ = S.heun(
        GMMDenoiser(), T * z, S.karras_times(128, EPS, T), y=y
    )  # w = 1: conditional ODE of component 2
    ref = torch.as_tensor(GMMDenoiser().component(2).flow(T * z.numpy(), T, EPS))
    assert (x - ref).abs().max() < 2e-3
    # D_w = D_null + w (D_c - D_null): check one evaluation against the formula, and its NFE of 2
    net, xs, s = S.Calls(Counted(GMMDenoiser()), y), T * z, 3.0
    m = GMMDenoiser()
    d_null, d_c = (
        m(xs, torch.full((8,), s, dtype=torch.float64), torch.full((8,), -1)),
        m(xs, torch.full((8,), s, dtype=torch.float64), y),
    )
    torch.testing.assert_close(net.D(xs, s, w=2.5), d_null + 2.5 * (d_c - d_null))
    assert net.n == net.model.calls == 2


# ----------------------------------------------------------------------------------------------
# seeds / batching
SAMPLERS = {
    "onestep": lambda m, z, r: S.onestep(m, T * z),
    "ancestral": lambda m, z, r: S.ancestral(m, T * z, [T, 2.4, EPS]),
    "zigzag": lambda m, z, r: S.zigzag(m, T * z, [(0.1, 1.2)], r),
    "combined": lambda m, z, r: S.combined(m, T * z, [T, 3.0, EPS], [(0.12, 0.4), (0.05, 0.2)], r),
    "multistep": lambda m, z, r: S.cm_multistep(m, T * z, [T, 0.7, 0.3], r),
    "heun": lambda m, z, r: S.heun(GaussDenoiser(), T * z, S.karras_times(6, EPS, T, zero=True)),
}
EXPECTED_NFE = {
    "onestep": 1,
    "ancestral": 2,
    "zigzag": 3,
    "combined": 6,
    "multistep": 3,
    "heun": 11,
}  # heun: 5 Heun steps + final Euler


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samples_do_not_depend_on_batch_size(name):
    seeds = list(range(100, 164))
    out = {}
    for batch in (1, 7, 64):
        parts = []
        for i in range(0, len(seeds), batch):
            rng = S.SeededRNG(seeds[i : i + batch])
            parts.append(SAMPLERS[name](GaussFlow(), rng.randn((3, 4, 4)), rng)[0])
        out[batch] = torch.cat(parts)
    assert torch.equal(out[1], out[7]) and torch.equal(out[1], out[64])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nfe_equals_network_calls(name):
    model = Counted(GaussFlow())
    rng = S.SeededRNG(range(4))
    if name == "heun":
        model = Counted(GaussDenoiser())
        x, nfe = S.heun(model, T * rng.randn((3,)), S.karras_times(6, EPS, T, zero=True))
    else:
        x, nfe = SAMPLERS[name](model, rng.randn((3,)), rng)
    assert nfe == model.calls == EXPECTED_NFE[name]
    model = Counted(GaussDenoiser())
    _, nfe = S.heun(
        model,
        T * rng.randn((3,)),
        S.karras_times(6, EPS, T, zero=True),
        y=torch.zeros(4, dtype=torch.long),
        w=2.0,
    )
    assert nfe == model.calls == 22  # CFG: conditional + null call per evaluation


def test_imagenet_recipes_have_the_spec_nfe_and_times():
    nfe = {}
    for k in (1, 2, 3, 4):
        rng = S.SeededRNG(range(2))
        model = Counted(GaussFlow())
        _, nfe[k] = S.generate(model, R.get_recipe(f"imagenet64-nfe{k}"), rng.randn((3,)), rng)
        assert nfe[k] == model.calls == k
    assert R.get_recipe("imagenet64-nfe4").for_model(GaussFlow()).times == (T, 3.0, EPS)
    assert R.get_recipe("imagenet64-nfe4").pairs == ((0.12, 0.4),)
    # CM index schedules: '0,22,39' of 40 starts at T and stays within the range
    taus = R.get_recipe("cd-imagenet64-nfe2").for_model(GaussFlow()).times  # index 39 ends the loop
    assert len(taus) == 2 and taus[0] == T and T > taus[1] > EPS
    for name, r in {**R.RECIPES, **R.SCHEDULES}.items():  # every recipe passes its own check
        direction = "increasing" if r.method in ("invert", "inpaint") else "decreasing"
        times = r.for_model(GaussFlow()).times
        S.check_times(GaussFlow(), times, name, direction, min_len=0, allow_final_zero=True)
    with pytest.raises(UserError, match="unknown generation recipe"):
        R.get_recipe("nope")
    with pytest.raises(UserError, match="inversion/editing schedule"):
        R.get_recipe("demo-invert-nfe2")  # generation recipes and schedules are kept apart


def test_parse_flags():
    from bcmcore.cli._args import parse_pairs, parse_times

    assert parse_times("80, 2.4,0.002") == [80.0, 2.4, 0.002]
    assert parse_pairs("0.1:1.2,0.12:0.4") == [(0.1, 1.2), (0.12, 0.4)]
    with pytest.raises(UserError, match="--zigzag"):
        parse_pairs("0.1-1.2")
    with pytest.raises(UserError, match="--steps"):
        parse_times("80,x")


# ---------------------------------------------------------------------------------------- bad input
BAD = {
    "ancestral not decreasing": (
        "bcm",
        lambda m, x, r: S.ancestral(m, x, [T, 0.1, 2.4, EPS]),
        "strictly decreasing",
    ),
    "ancestral above T": ("bcm", lambda m, x, r: S.ancestral(m, x, [100.0, EPS]), "outside"),
    "ancestral below eps": ("bcm", lambda m, x, r: S.ancestral(m, x, [T, 0.0]), "outside"),
    "zigzag pair reversed": (
        "bcm",
        lambda m, x, r: S.zigzag(m, x, [(1.2, 0.1)], r),
        "strictly increasing",
    ),
    "combined not ending at eps": (
        "bcm",
        lambda m, x, r: S.combined(m, x, [T, 1.0], [(0.1, 1.2)], r),
        "end at",
    ),
    "cm asked for ancestral": ("cm", lambda m, x, r: S.ancestral(m, x, [T, 2.4, EPS]), "kind bcm"),
    "cm asked for zigzag": ("cm", lambda m, x, r: S.zigzag(m, x, [(0.1, 1.2)], r), "kind bcm"),
    "bcm asked for heun": ("bcm", lambda m, x, r: S.heun(m, x, [T, EPS]), "kind edm"),
    "edm asked for onestep": ("edm", lambda m, x, r: S.onestep(m, x), "kind cm or bcm"),
    "multistep increasing": (
        "cm",
        lambda m, x, r: S.cm_multistep(m, x, [T, 0.2, 0.7], r),
        "decreasing",
    ),
    "heun nan": ("edm", lambda m, x, r: S.heun(m, x, [T, float("nan")]), "outside"),
    "guidance without labels": (
        "edm",
        lambda m, x, r: S.heun(m, x, [T, EPS], w=2.0),
        "needs class labels",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_user_error_before_any_network_call(case):
    kind, call, msg = BAD[case]
    model = Counted(GaussDenoiser() if kind == "edm" else GaussFlow(), kind=kind)
    rng = S.SeededRNG(range(2))
    with pytest.raises(UserError, match=msg):
        call(model, T * rng.randn((3,)), rng)
    assert model.calls == 0


@pytest.mark.gpu
def test_cuda_samples_equal_cpu_samples():
    """Noise is drawn on CPU per seed and moved, so a GPU run reproduces the CPU samples."""
    out = {}
    for dev in ("cpu", "cuda"):
        rng = S.SeededRNG(range(8), dev)
        x, _ = S.combined(GaussFlow(), T * rng.randn((3, 4, 4)), [T, 3.0, EPS], [(0.12, 0.4)], rng)
        out[dev] = x.cpu()
    torch.testing.assert_close(out["cpu"], out["cuda"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["imagenet64-nfe3", "imagenet64-nfe4", "digits-bcm_ft-nfe4"])
def test_generate_zigzag_and_combined_recipes_follow_the_exact_flow(name):
    """The path the eval sweep takes (Recipe -> generate) against Alg. 3 / 4 on the exact flow map:
    x_T = T z, ancestral down to eps, then per round f(f(x + e z', e, t), t, eps) with fresh z'."""
    model = ExactFlowMap(DEMO_GMM)
    rng, z = gmm_points(6)
    x, nfe = S.generate(model, R.get_recipe(name), z, rng)
    recipe = R.get_recipe(name).for_model(model)
    ref_rng, ref_z = gmm_points(6)
    ref = T * ref_z
    times = list(recipe.times)
    for a, b in zip(times, times[1:]):
        ref = flow(ref, a, b)
    for e, t in recipe.pairs:
        ref = flow(flow(ref + e * ref_rng.randn((2,), dtype=torch.float64), e, t), t, EPS)
    assert nfe == len(times) - 1 + 2 * len(recipe.pairs)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)
