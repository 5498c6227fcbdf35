"""Inversion, interpolation, inpainting, JPEG restoration and ODE inversion against exact flow
maps."""

import math

import numpy as np
import pytest
import torch
from helpers import EPS, Counted, GaussDenoiser, GaussFlow, GMMDenoiser, T, flow

from bcmcore import editing as E
from bcmcore import images as pixels
from bcmcore import sampling as S
from bcmcore.config import UserError
from bcmcore.toy import DEMO_GMM, ExactFlowMap

phi = GaussFlow.phi


def gmm_data(n=16, seed=0):
    x, _ = DEMO_GMM.sample(n, np.random.default_rng(seed))
    return torch.as_tensor(x)


def images(b=4, seed=0):
    """Smooth [-1, 1] images (JPEG-friendly)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)


def draws(seeds, shape, k, dtype=torch.float64):
    """The first k draws of each sample's stream, as the routines consume them."""
    rng = S.SeededRNG(seeds)
    return [rng.randn(shape, dtype=dtype) for _ in range(k)]


# ----------------------------------------------------------------------------------------------
# inversion
def test_inversion_and_reconstruction_are_the_exact_flow_of_the_noised_input():
    x, seeds, times = gmm_data(), range(16), [0.07, 15.0, T]
    model = ExactFlowMap(DEMO_GMM)
    latent, nfe = E.invert(model, x, times, S.SeededRNG(seeds))  # BCM Alg. 5
    assert nfe == 2
    z0 = draws(seeds, (2,), 1)[0]
    x_t0 = x + 0.07 * z0  # small initial noise at t0
    torch.testing.assert_close(latent, flow(x_t0, 0.07, T), rtol=1e-6, atol=1e-6)
    rec, nfe = E.reconstruct(model, latent, T)
    assert nfe == 1
    torch.testing.assert_close(rec, flow(x_t0, 0.07, EPS), rtol=0, atol=1e-5)
    # the only loss is the initial perturbation t0 z0 carried by the flow: the error is of its size
    # and shrinks with t0 (t0 = eps: f(x + eps z, eps, eps) = x + eps z exactly)
    err, bound = (rec - x).norm(dim=1), 0.07 * z0.norm(dim=1)
    assert err.mean() < bound.mean() and bool((err < 2 * bound).all()), (err, bound)
    latent, _ = E.invert(model, x, [EPS, T], S.SeededRNG(seeds))
    rec, _ = E.reconstruct(model, latent, T)
    torch.testing.assert_close(rec, x + EPS * z0, rtol=0, atol=1e-5)


def test_inversion_may_stop_below_T_and_decode_along_a_schedule():
    x, seeds = images(2), [5, 6]
    latent, _ = E.invert(GaussFlow(), x, [0.05, 0.5, 3.0], S.SeededRNG(seeds))
    x_t0 = x + 0.05 * draws(seeds, (3, 16, 16), 1)[0]
    torch.testing.assert_close(latent, phi(x_t0, 0.05, 3.0))
    rec, nfe = E.reconstruct(GaussFlow(), latent, 3.0, gen_times=[3.0, 0.3, EPS])
    assert nfe == 2
    torch.testing.assert_close(rec, phi(x_t0, 0.05, EPS))


def test_heun_ode_inversion_round_trip_approaches_the_flow_map():
    x = gmm_data(16)
    up = S.karras_times(128, EPS, T)[::-1]
    latent, nfe = E.heun_invert(GMMDenoiser(), x, up)
    assert nfe == 2 * 127
    ref = flow(x, EPS, T)
    assert (latent - ref).abs().max() < 3e-3 * ref.abs().max()
    rec, _ = S.heun(GMMDenoiser(), latent, up[::-1])
    assert (rec - x).abs().max() < 2e-3


# ----------------------------------------------------------------------------------------------
# interpolation
def test_slerp_identities():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(3, 50, generator=g, dtype=torch.float64),
        torch.randn(3, 50, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(E.slerp(a, b, 0.0), a)
    torch.testing.assert_close(E.slerp(a, b, 1.0), b)
    a2 = a / a.norm(dim=1, keepdim=True)
    b2 = b / b.norm(dim=1, keepdim=True)
    theta = torch.arccos((a2 * b2).sum(1))
    ang = torch.arccos((a2 * E.slerp(a2, b2, 0.3)).sum(1))
    torch.testing.assert_close(ang, 0.3 * theta)  # Eq. 16 moves along the great circle
    torch.testing.assert_close(E.slerp(a2, b2, 0.5).norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_interpolation_endpoints_reconstruct_each_image():
    x1, x2, times = images(2, 1), images(2, 2), [0.07, 15.0, T]
    model = Counted(GaussFlow())
    out, nfe = E.interpolate(
        model, x1, x2, times, [0.0, 0.5, 1.0], S.SeededRNG([1, 2]), S.SeededRNG([3, 4])
    )
    assert out.shape == (3, 2, 3, 16, 16) and nfe == model.calls == 2 * 2 + 3
    z1, z2 = draws([1, 2], (3, 16, 16), 1)[0], draws([3, 4], (3, 16, 16), 1)[0]
    torch.testing.assert_close(out[0], phi(x1 + 0.07 * z1, 0.07, EPS))
    torch.testing.assert_close(out[2], phi(x2 + 0.07 * z2, 0.07, EPS))


class ClassGaussFlow(torch.nn.Module):
    """Exact flow map of class-conditional Gaussians: class k ~ N(mu_k, s^2 I), mu_k = MU[k].

    Phi(x, t -> u | k) = mu_k + (x - mu_k) sqrt(s^2 + u^2) / sqrt(s^2 + t^2): every call uses y.
    """

    kind, sigma_min, sigma_max, s, MU = "bcm", EPS, T, 0.3, (-0.6, 0.7)

    def forward(self, x, t, u=None, y=None):
        mu = torch.tensor(self.MU, dtype=x.dtype)[y].reshape(-1, *[1] * (x.ndim - 1))
        a = torch.sqrt((self.s**2 + u**2) / (self.s**2 + t**2)).to(x.dtype)
        return mu + (x - mu) * a.reshape(mu.shape)


def test_class_conditional_interpolation_decodes_each_endpoint_with_its_own_label():
    """alpha = 0 / 1 give the reconstructions of x1 / x2 under their own labels y1 / y2 (a bug
    decoded every alpha with y1, so alpha = 1 was decode(z2, y1)); in between, the nearer label."""
    x1, x2, times = images(2, 1), images(2, 2), [0.07, 15.0, T]
    y1, y2 = torch.tensor([0, 1]), torch.tensor([1, 0])
    model, r1, r2 = ClassGaussFlow(), S.SeededRNG([1, 2]), S.SeededRNG([3, 4])
    alphas = [0.0, 0.25, 0.5, 1.0]
    out, nfe = E.interpolate(model, x1, x2, times, alphas, r1, r2, y1, y2)
    assert nfe == 2 * 2 + len(alphas)

    def rec(x, y, seeds):
        latent, _ = E.invert(model, x, times, S.SeededRNG(seeds), y)
        return E.reconstruct(model, latent, T, y)[0], latent

    (rec1, z1), (rec2, z2) = rec(x1, y1, [1, 2]), rec(x2, y2, [3, 4])
    torch.testing.assert_close(out[0], rec1)
    torch.testing.assert_close(out[-1], rec2)
    assert not torch.allclose(rec2, model(z2, torch.full((2,), T), torch.full((2,), EPS), y1))
    for i, a, y in ((1, 0.25, y1), (2, 0.5, y2)):
        ref = model(E.slerp(z1, z2, a), torch.full((2,), T), torch.full((2,), EPS), y)
        torch.testing.assert_close(out[i], ref)


# ----------------------------------------------------------------------------------------------
# inpainting
def test_bcm_inpainting_keeps_known_pixels_and_refills_noise_at_each_level():
    x, seeds = images(3), [7, 8, 9]
    mask = E.random_box_mask(x.shape).double()
    times, gen = [0.05, 0.5, 2.0], [2.0, 0.3, EPS]
    model = Counted(GaussFlow())
    out, nfe = E.inpaint(model, x, mask, times, gen, S.SeededRNG(seeds))  # BCM Alg. 6
    assert nfe == model.calls == 2 + 2
    keep = mask.expand_as(x) == 0
    assert torch.equal(out[keep], x[keep])
    # pixels are independent under N(0, s^2 I), so the missing region is the last refill t_M z_M
    # decoded to eps
    z_last = draws(seeds, (3, 16, 16), len(times))[-1]
    torch.testing.assert_close(out[~keep], phi(2.0 * z_last, 2.0, EPS)[~keep])


def test_cm_inpainting_matches_cm_algorithm_4():
    x, seeds, taus = images(2), [1, 2], [T, 0.8]
    mask = E.random_box_mask(x.shape, 0.25).double()
    model = Counted(GaussFlow(), kind="cm")
    out, nfe = E.cm_inpaint(model, x, mask, taus, S.SeededRNG(seeds), fill=0.0)
    assert nfe == model.calls == 2
    keep = mask.expand_as(x) == 0
    assert torch.equal(out[keep], x[keep])
    z1, z2 = draws(seeds, (3, 16, 16), 2)
    first = phi(x * (1 - mask) + T * z1, T, EPS)  # missing pixels start at 0
    first = x * (1 - mask) + first * mask
    ref = phi(first + math.sqrt(0.8**2 - EPS**2) * z2, 0.8, EPS)
    torch.testing.assert_close(out[~keep], ref[~keep])


def test_inpainting_with_refinement_keeps_known_pixels():
    x = images(2)
    mask = E.random_box_mask(x.shape).double()
    model = Counted(GaussFlow())
    out, nfe = E.inpaint_refine(
        model, x, mask, [0.05, 2.0], [2.0, EPS], [0.6, 0.2], S.SeededRNG([0, 1]), clamp=True
    )  # BCM Alg. 7
    assert nfe == model.calls == 1 + 1 + 2
    keep = mask.expand_as(x) == 0
    assert torch.equal(out[keep], x[keep]) and out.abs().max() <= 1


# ----------------------------------------------------------------------------------------------
# JPEG
def test_jpeg_restoration_inverts_then_decodes_and_is_scored_against_the_clean_image():
    x, seeds = images(2), [3, 4]
    xj = E.jpeg_compress(x, quality=10)
    assert E.mse_uint8(xj, x).min() > 1e-5  # compression did something
    assert (E.mse_uint8(E.jpeg_compress(x, 100), x) < E.mse_uint8(xj, x)).all()
    model = Counted(GaussFlow())
    out, nfe = E.jpeg_restore(model, xj, [0.1, 0.6, 1.5], S.SeededRNG(seeds))
    assert nfe == model.calls == 2 + 1
    torch.testing.assert_close(out, phi(xj + 0.1 * draws(seeds, (3, 16, 16), 1)[0], 0.1, EPS))
    assert not torch.equal(E.mse_uint8(out, x), E.mse_uint8(out, xj))


def test_uint8_round_trip():
    a = (torch.arange(256, dtype=torch.uint8).reshape(1, 4, 8, 8).permute(0, 2, 3, 1)).numpy()
    assert np.array_equal(pixels.to_uint8_nhwc(pixels.from_uint8_nhwc(a)), a)


# ---------------------------------------------------------------------------------------- bad input
X = images(2)
BAD = {
    "inversion times decreasing": (
        "bcm",
        lambda m, r: E.invert(m, X, [T, 0.07], r),
        "strictly increasing",
    ),
    "inversion above T": ("bcm", lambda m, r: E.invert(m, X, [0.07, 90.0], r), "outside"),
    "cm asked to invert": ("cm", lambda m, r: E.invert(m, X, [0.07, T], r), "kind bcm"),
    "edm asked to invert": ("edm", lambda m, r: E.invert(m, X, [0.07, T], r), "kind bcm"),
    "mask shape": (
        "bcm",
        lambda m, r: E.inpaint(m, X, torch.ones(2, 3, 8, 8), [0.05, 2.0], [2.0, EPS], r),
        "does not match",
    ),
    "mask not binary": (
        "bcm",
        lambda m, r: E.inpaint(m, X, torch.full((1, 1, 16, 16), 0.5), [0.05, 2.0], [2.0, EPS], r),
        "only 0",
    ),
    "cm inpaint mask shape": (
        "cm",
        lambda m, r: E.cm_inpaint(m, X, torch.ones(3, 16), [T], r),
        "does not match",
    ),
    "gen times not from t_M": (
        "bcm",
        lambda m, r: E.inpaint(m, X, E.random_box_mask(X.shape), [0.05, 2.0], [3.0, EPS], r),
        "generation times",
    ),
    "refine increasing": (
        "bcm",
        lambda m, r: E.inpaint_refine(
            m, X, E.random_box_mask(X.shape), [0.05, 2.0], [2.0, EPS], [0.2, 0.6], r
        ),
        "decreasing",
    ),
    "same interpolation seeds": (
        "bcm",
        lambda m, r: E.interpolate(m, X, X, [0.07, T], [0.5], r, S.SeededRNG([0, 1])),
        "different initial noises",
    ),
    "alpha outside": (
        "bcm",
        lambda m, r: E.interpolate(m, X, X, [0.07, T], [1.5], r, S.SeededRNG([5, 6])),
        "alphas",
    ),
    "heun inversion on bcm": ("bcm", lambda m, r: E.heun_invert(m, X, [EPS, T]), "kind edm"),
    "heun inversion decreasing": ("edm", lambda m, r: E.heun_invert(m, X, [T, EPS]), "increasing"),
    "jpeg quality": ("bcm", lambda m, r: E.jpeg_compress(X, 0), "quality"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_user_error_before_any_network_call(case):
    kind, call, msg = BAD[case]
    model = Counted(GaussDenoiser() if kind == "edm" else GaussFlow(), kind=kind)
    with pytest.raises(UserError, match=msg):
        call(model, S.SeededRNG([0, 1]))
    assert model.calls == 0


# ----------------------------------------------------------------------------------------------
# zero-shot super-resolution and colorization (CM Alg. 4 with a linear operator)
def _paper_replacement(x, y, first_col, blocks):
    """CM Alg. 4's A^-1[(A y)(1 - Omega) + (A x) Omega] built literally: A an orthogonal matrix
    from QR with `first_col` (normalised) as its first basis vector, Omega = all but that one.
    `blocks(v)` -> [..., d] vectors the matrix acts on, and its inverse."""
    d = first_col.numel()
    m = torch.eye(d, dtype=torch.float64)
    m[:, 0] = first_col / first_col.norm()
    Q, _ = torch.linalg.qr(m)
    Q = Q * torch.sign(Q[:, 0].sum())
    to, back = blocks
    ax, ay = to(x) @ Q, to(y) @ Q  # coordinates in A's basis
    ax[..., 0] = ay[..., 0]
    return back(ax @ Q.T)


def _sr_blocks(p, shape):
    B, C, H, W = shape
    to = lambda v: v.reshape(B, C, H // p, p, W // p, p).permute(0, 1, 2, 4, 3, 5).flatten(-2)
    back = lambda v: v.reshape(B, C, H // p, W // p, p, p).permute(0, 1, 2, 4, 3, 5).reshape(shape)
    return to, back


COLOR_BLOCKS = (lambda v: v.permute(0, 2, 3, 1), lambda v: v.permute(0, 3, 1, 2))


@pytest.mark.parametrize("task", ["super-resolution", "colorize"])
def test_projection_is_the_cm_papers_orthogonal_operator(task):
    """x - P x + P y equals Alg. 4's replacement with an explicit orthogonal A (a wrong P, e.g.
    bilinear upsampling or unnormalised luma weights, fails here)."""
    from bcmcore.linear_ops import LUMA, make_operator

    g = torch.Generator().manual_seed(3)
    x, y = (torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    op = make_operator(task, factor=4)
    if task == "super-resolution":
        ref = _paper_replacement(x, y, torch.ones(16, dtype=torch.float64), _sr_blocks(4, x.shape))
    else:
        ref = _paper_replacement(x, y, torch.tensor(LUMA, dtype=torch.float64), COLOR_BLOCKS)
    torch.testing.assert_close(x - op.project(x) + op.project(y), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("task", ["super-resolution", "colorize"])
def test_linear_editing_keeps_the_observation_and_follows_algorithm_4(task):
    from bcmcore.linear_ops import make_operator

    x, seeds, taus = images(2), [4, 5], [T, 0.8]
    op = make_operator(task, factor=4)
    model = Counted(GaussFlow(), kind="cm")
    out, nfe = E.cm_linear_edit(model, x, op, taus, S.SeededRNG(seeds))
    assert nfe == model.calls == 2
    # A(output) = A(input): the low-resolution image / the luminance is kept exactly
    torch.testing.assert_close(op.observe(out), op.observe(x), rtol=0, atol=1e-12)
    z1, z2 = draws(seeds, (3, 16, 16), 2)
    kept = op.project(x)

    def replace(v):
        return v - op.project(v) + kept

    first = replace(phi(kept + T * z1, T, EPS))  # Alg. 4 lines 1-4
    ref = replace(phi(first + math.sqrt(0.8**2 - EPS**2) * z2, 0.8, EPS))  # lines 5-8
    torch.testing.assert_close(out, ref)
    assert (out - kept).abs().max() > 0.05  # the model filled in what A does not observe
    clamped, _ = E.cm_linear_edit(GaussFlow(), x, op, taus, S.SeededRNG(seeds), clamp=True)
    torch.testing.assert_close(op.observe(clamped), op.observe(x), rtol=0, atol=1e-12)


def test_linear_editing_errors():
    from bcmcore.linear_ops import make_operator

    gray = images(1)[:, :1]
    with pytest.raises(UserError, match="colorization: needs 3-channel colour images, got 1-ch"):
        E.cm_linear_edit(GaussFlow(), gray, make_operator("colorize"), [T], S.SeededRNG([0]))
    with pytest.raises(UserError, match="do not split into 3x3 patches"):
        E.cm_linear_edit(
            GaussFlow(), images(1), make_operator("super-resolution", 3), [T], S.SeededRNG([0])
        )
    with pytest.raises(UserError, match="--factor must be an integer >= 2"):
        make_operator("super-resolution", 1)
