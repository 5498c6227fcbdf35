"""Every inversion and edit: inversion, interpolation, inpainting, JPEG restoration, and class
editing with guidance (iGCT, CFG-EDM).

BCM Alg. 5-7 and App. B/C.3, CM Alg. 4 (zero-shot inpainting), EDM ODE inversion as a baseline,
iGCT's 2-NFE class edit (docs/methods.md §9-10). iGCT's guided generation is the `igct` sampler in
bcmcore.sampling.
Every routine validates its inputs before the first network call and returns (result, nfe).
Masks use BCM's convention: 1 = missing pixel (to be filled), 0 = known.
"""

import io
import math

import numpy as np
import torch

from bcmcore.config import UserError
from bcmcore.images import from_uint8_nhwc, to_uint8, to_uint8_nhwc
from bcmcore.nets.facts import check_kind, class_labels, is_vector
from bcmcore.nets.igct import check_w
from bcmcore.sampling import (
    Calls,
    ancestral,
    check_guidance,
    check_times,
    heun,
    heun_ode,
    karras_times,
)


def _check_mask(mask, x, routine):
    mask = torch.as_tensor(mask)
    try:
        ok = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise UserError(
            f"{routine}: mask of shape {tuple(mask.shape)} does not match images of shape "
            f"{tuple(x.shape)} (expected the image shape, or 1 where it broadcasts)"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise UserError(f"{routine}: mask must hold only 0 (known) and 1 (missing)")
    return mask.to(device=x.device, dtype=x.dtype)


def _noise(rng, x):
    return rng.randn(x.shape[1:], dtype=x.dtype).to(x.device)


# ----------------------------------------------------------------------------------------------
# Inversion and reconstruction


def _invert_steps(net, x, times):
    for t_from, t_to in zip(times, times[1:]):  # BCM Alg. 5, line 3: x <- f(x, t_{i-1}, t_i)
        x = net.f(x, t_from, t_to)
    return x


@torch.no_grad()
def invert(model, x, times, rng, y=None):
    """BCM Alg. 5: x_{t0} = x + t0 z (small initial noise, t0 > eps), then f(x, t_{i-1}, t_i) up to
    t_M <= T."""
    check_kind(model, ("bcm",), "invert")
    times = check_times(model, times, "inversion times", "increasing")
    net = Calls(model, y)
    return _invert_steps(net, x + times[0] * _noise(rng, x), times), net.n


@torch.no_grad()
def reconstruct(model, latent, t, y=None, gen_times=None):
    """Decode an inverted latent at level t: 1-step f(latent, t, eps), or ancestral along gen_times
    from t."""
    times = list(gen_times) if gen_times else [t, model.sigma_min]
    if abs(times[0] - t) > 1e-9 * max(1.0, t):
        raise UserError(
            f"reconstruct: generation times must start at the latent's level {t:g}, got {times}"
        )
    return ancestral(model, latent, times, y)


class _ZeroNoise:
    """Stands in for SeededRNG where BCM's initial inversion noise is switched off."""

    def randn(self, shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype)


@torch.no_grad()
def igct_invert(model, x, y):
    """1-step iGCT inversion through the noiser: z_lat = N(x, sigma_min, c) (docs/methods.md §10;
    latent scale ~ T)."""
    check_kind(model, ("igct",), "igct_invert")
    return model.noiser(x, model.sigma_min, class_labels(model, y, x.shape[0], x.device)), 1


@torch.no_grad()
def invert_and_reconstruct(
    model, x, rng, y=None, times=(), gen_times=(), steps=18, initial_noise=True, clamp=None
):
    """Invert x and decode the latent again, per model kind (docs/methods.md §10); the one routine
    behind `bcm invert` and the eval sweep's inversion MSE. -> (latent, x_hat, inversion NFE, NFE).

    bcm: BCM Alg. 5 along increasing `times` (initial noise t_0 z unless initial_noise is False),
      then 1 step t_M -> eps, or ancestral along `gen_times`;
    edm: Heun ODE up a `steps`-point Karras grid on the model's sigmas with the class (no CFG),
      then Heun back down to 0;
    igct: the noiser z = N(x, eps, c), then the denoiser D(z, T, c, w = 1), clipped to [-1, 1]
      unless clamp is False (default: images are clipped, toy vectors are not).
    """
    check_kind(model, ("bcm", "edm", "igct"), "inversion")
    if model.kind == "bcm":
        latent, n_inv = invert(model, x, times, rng if initial_noise else _ZeroNoise(), y)
        x_hat, n_gen = reconstruct(model, latent, float(times[-1]), y, gen_times or None)
    elif model.kind == "edm":
        latent, n_inv = edm_invert(model, x, y, steps)
        x_hat, n_gen = heun(
            model, latent, karras_times(steps, model.sigma_min, model.sigma_max, zero=True), y
        )
    else:
        latent, n_inv = igct_invert(model, x, y)
        y = class_labels(model, y, x.shape[0], x.device)
        x_hat, n_gen = model.denoiser(latent, model.sigma_max, y, 1.0), 1
        if not is_vector(model) if clamp is None else clamp:
            x_hat = x_hat.clamp(-1, 1)
    return latent, x_hat, n_inv, n_inv + n_gen


def slerp(x1, x2, alpha):
    """Spherical interpolation (BCM Eq. 16), per sample: theta = angle between the flattened x1 and
    x2."""
    a, b = x1.flatten(1).double(), x2.flatten(1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    out = (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta)
    return out.reshape(x1.shape).to(x1.dtype)


@torch.no_grad()
def interpolate(model, x1, x2, times, alphas, rng1, rng2, y1=None, y2=None):
    """App. C.3.1: invert x1, x2 (Alg. 5) with different initial noises, slerp, decode 1 step.

    Returns [A, B, ...]. Each image is inverted with its own label; a class-conditional decode takes
    the nearer endpoint's label, y1 for alpha < 1/2 and y2 for alpha >= 1/2, so alpha = 0 and
    alpha = 1 reproduce each image's own reconstruction. (BCM interpolates only unconditional
    models; this rule is ours.)
    """
    check_kind(model, ("bcm",), "interpolate")
    times = check_times(model, times, "inversion times", "increasing")
    alphas = [float(a) for a in alphas]
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise UserError(f"interpolate: alphas must lie in [0, 1], got {alphas}")
    if x1.shape != x2.shape:
        raise UserError(
            f"interpolate: image batches differ in shape, {tuple(x1.shape)} vs {tuple(x2.shape)}"
        )
    if getattr(rng1, "seeds", None) is not None and rng1.seeds == getattr(rng2, "seeds", None):
        raise UserError(
            "interpolate: the two images need different initial noises (seeds); BCM App. C.3.1"
        )
    z1, n1 = invert(model, x1, times, rng1, y1)
    z2, n2 = invert(model, x2, times, rng2, y2)
    nets = Calls(model, y1), Calls(model, y2)
    out = torch.stack(
        [nets[a >= 0.5].f(slerp(z1, z2, a), times[-1], model.sigma_min) for a in alphas]
    )
    return out, n1 + n2 + nets[0].n + nets[1].n


@torch.no_grad()
def heun_invert(model, x, times, y=None, w=1.0):
    """EDM ODE inversion (deterministic Heun, EDM Alg. 1 run with increasing times from ~0 =
    sigma_min)."""
    check_kind(model, ("edm",), "heun_invert")
    times = check_times(model, times, "heun inversion times", "increasing")
    check_guidance(y, w, "heun_invert")
    net = Calls(model, y)
    return heun_ode(net, x, times, w), net.n


@torch.no_grad()
def edm_invert(model, x, y=None, steps=18):
    """EDM ODE inversion up a `steps`-point Karras grid sigma_min .. T (EDM Eq. 5) with the class y,
    no CFG (docs/methods.md §10): the one inversion of `invert_and_reconstruct` and `edm_edit`."""
    check_kind(model, ("edm",), "edm_invert")
    return heun_invert(model, x, karras_times(steps, model.sigma_min, model.sigma_max)[::-1], y)


# ----------------------------------------------------------------------------------------------
# Class editing with guidance: iGCT (noiser + guided denoiser, 2 NFE) and the CFG-EDM baseline
# (docs/methods.md §10); w in the paper convention (w = 1: no guidance).


@torch.no_grad()
def igct_edit(model, x, y_src, y_tar, w=1.0, clamp=True):
    """Class editing x_edit = clip(D(N(x, sigma_min, c_src), T, c_tar, w)): 2 NFE (docs/methods.md
    §9-10). y_tar = y_src: recon."""
    check_kind(model, ("igct",), "igct_edit")
    check_w(w)
    y_src = class_labels(model, y_src, x.shape[0], x.device, "source class")
    y_tar = class_labels(model, y_tar, x.shape[0], x.device, "target class")
    z_lat, _ = igct_invert(model, x, y_src)
    x_edit = model.denoiser(z_lat, model.sigma_max, y_tar, w)
    return (x_edit.clamp(-1, 1) if clamp else x_edit), 2


@torch.no_grad()
def edm_edit(model, x, y_src, y_tar, w=1.0, steps=18, clamp=True):
    """EDM class editing: invert with c_src (ODE), then Heun-CFG sample from that latent with c_tar
    and w."""
    check_kind(model, ("edm",), "edm_edit")
    check_w(w)
    y_tar = class_labels(model, y_tar, x.shape[0], x.device, "target class")
    y_src = class_labels(model, y_src, x.shape[0], x.device, "source class")
    z_lat, nfe_inv = edm_invert(model, x, y_src, steps)
    x_edit, nfe_gen = heun(
        model,
        z_lat,
        karras_times(steps, model.sigma_min, model.sigma_max, zero=True),
        y_tar,
        float(w),
    )
    return (x_edit.clamp(-1, 1) if clamp else x_edit), nfe_inv + nfe_gen


def edit(model, x, y_src, y_tar, w=1.0, steps=18, clamp=True):
    """Class editing for either family: iGCT (noiser + guided denoiser) or EDM (ODE inversion +
    CFG)."""
    check_kind(model, ("igct", "edm"), "class editing")
    if model.kind == "igct":
        return igct_edit(model, x, y_src, y_tar, w, clamp)
    return edm_edit(model, x, y_src, y_tar, w, steps, clamp)


# ----------------------------------------------------------------------------------------------
# Inpainting (mask: 1 = missing)


def _bcm_inpaint(net, x_known, mask, times, gen_times, rng):
    x = (
        x_known * (1 - mask) + times[0] * _noise(rng, x_known) * mask
    )  # Alg. 6: fill with small noise
    for t_from, t_to in zip(times, times[1:]):
        x = net.f(x, t_from, t_to)  # invert one step
        x = x * (1 - mask) + t_to * _noise(rng, x) * mask  # fresh noise at the new level
    for t_from, t_to in zip(gen_times, gen_times[1:]):  # ancestral generation from t_M
        x = net.f(x, t_from, t_to)
    return x


def _check_inpaint(model, x_known, mask, times, gen_times, routine):
    check_kind(model, ("bcm",), routine)
    mask = _check_mask(mask, x_known, routine)
    times = check_times(model, times, f"{routine} inversion times", "increasing")
    gen_times = check_times(model, gen_times, f"{routine} generation times", "decreasing")
    if abs(gen_times[0] - times[-1]) > 1e-9 or abs(gen_times[-1] - model.sigma_min) > 1e-9:
        raise UserError(
            f"{routine}: generation times must run from the last inversion time {times[-1]:g} "
            f"down to sigma_min={model.sigma_min:g}, got {gen_times}"
        )
    return mask, times, gen_times


@torch.no_grad()
def inpaint(model, x_known, mask, times, gen_times, rng, y=None):
    """BCM Alg. 6: invert with the missing region re-filled by noise at each level, then
    generate."""
    mask, times, gen_times = _check_inpaint(model, x_known, mask, times, gen_times, "inpaint")
    net = Calls(model, y)
    x = _bcm_inpaint(net, x_known, mask, times, gen_times, rng)
    return x_known * (1 - mask) + x * mask, net.n  # known pixels are kept exactly


def _cm_refine(net, model, x, replace, taus, rng, clamp):
    """CM Alg. 4, lines 5-8: re-noise to tau, map to eps, replace the observed part."""
    eps = model.sigma_min
    for tau in taus:
        x = x + math.sqrt(tau**2 - eps**2) * _noise(rng, x)
        x = net.f(x, tau, eps)
        x = replace(x.clamp(-1, 1) if clamp else x)
    return x


@torch.no_grad()
def inpaint_refine(model, x_known, mask, times, gen_times, refine_times, rng, y=None, clamp=False):
    """BCM Alg. 7: Alg. 6, then CM-Alg.-4-style refinement at the decreasing noise levels
    refine_times."""
    mask, times, gen_times = _check_inpaint(
        model, x_known, mask, times, gen_times, "inpaint_refine"
    )
    refine_times = check_times(
        model, refine_times, "inpaint_refine refine times", "decreasing", min_len=1
    )
    net = Calls(model, y)
    x = _bcm_inpaint(net, x_known, mask, times, gen_times, rng)

    def replace(v):
        return x_known * (1 - mask) + v * mask

    x = replace(x.clamp(-1, 1) if clamp else x)
    return _cm_refine(net, model, x, replace, refine_times, rng, clamp), net.n


@torch.no_grad()
def cm_inpaint(model, x_known, mask, times, rng, y=None, fill=0.0, clamp=False):
    """CM Alg. 4 (zero-shot): x = f(y + tau_1 z, tau_1), paste; then re-noise sqrt(tau^2 - eps^2),
    f, paste."""
    check_kind(model, ("cm", "bcm"), "cm_inpaint")
    mask = _check_mask(mask, x_known, "cm_inpaint")
    times = check_times(model, times, "cm_inpaint times", "decreasing", min_len=1)
    net = Calls(model, y)
    x_known = (
        x_known * (1 - mask) + fill * mask
    )  # missing pixels set to a constant (CM Alg. 4, line 1)
    x = net.f(x_known + times[0] * _noise(rng, x_known), times[0], model.sigma_min)

    def replace(v):
        return x_known * (1 - mask) + v * mask

    x = replace(x.clamp(-1, 1) if clamp else x)
    return _cm_refine(net, model, x, replace, times[1:], rng, clamp), net.n


@torch.no_grad()
def cm_linear_edit(model, x_ref, op, times, rng, y=None, clamp=False):
    """CM Alg. 4 with a linear operator A (bcmcore/linear_ops.py: super-resolution, colorization):
    start from the observed part P y (line 1), x = f(P y + tau_1 z, tau_1), then x <- x - P x + P y
    after every step (lines 4 and 8), re-noising to each later tau. observe(output) = observe(y)
    exactly (up to float rounding); clamp (the CM code) clips before each replacement, so it
    keeps that identity."""
    check_kind(model, ("cm", "bcm"), f"cm {op.name}")
    op.check(x_ref)
    times = check_times(model, times, f"{op.name} times", "decreasing", min_len=1)
    net = Calls(model, y)
    kept = op.project(x_ref)  # A^-1[(A y)(1 - Omega) + 0 Omega]

    def replace(v):  # A^-1[(A y)(1 - Omega) + (A v) Omega]
        return v - op.project(v) + kept

    x = net.f(kept + times[0] * _noise(rng, x_ref), times[0], model.sigma_min)
    x = replace(x.clamp(-1, 1) if clamp else x)
    return _cm_refine(net, model, x, replace, times[1:], rng, clamp), net.n


def random_box_mask(shape, frac=0.5, device="cpu"):
    """[1, 1, H, W] mask (1 = missing) hiding the centre square covering `frac` of the side
    length."""
    H, W = shape[-2:]
    h, w = max(1, round(H * frac)), max(1, round(W * frac))
    m = torch.zeros(1, 1, H, W, device=device)
    m[..., (H - h) // 2 : (H - h) // 2 + h, (W - w) // 2 : (W - w) // 2 + w] = 1
    return m


# ----------------------------------------------------------------------------------------------
# Blind JPEG restoration (BCM App. B.1.2 / C.3.3)


def jpeg_compress(x, quality=20):
    """JPEG round trip with PIL at `quality` (the authors' hook used 20); [-1, 1] NCHW in and
    out."""
    from PIL import Image

    if not 1 <= int(quality) <= 100:
        raise UserError(f"jpeg quality: expected 1..100, got {quality}")
    out = []
    for img in to_uint8_nhwc(x):
        buf = io.BytesIO()
        Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(
            buf, format="JPEG", quality=int(quality)
        )
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out.append(dec[..., None] if dec.ndim == 2 else dec)
    return from_uint8_nhwc(np.stack(out), x.device).to(x.dtype)


@torch.no_grad()
def jpeg_restore(model, x_jpeg, times, rng, y=None):
    """Invert the compressed image k = len(times)-1 steps to an intermediate level (Alg. 5), decode
    1 step."""
    latent, n_inv = invert(model, x_jpeg, times, rng, y)
    x, n_gen = reconstruct(model, latent, float(times[-1]), y)
    return x, n_inv + n_gen


def mse_per_item(a, b, vector=False):
    """Per-item MSE per dimension: raw values for vectors; [0, 1]-scaled uint8-quantised for
    images."""
    if vector:
        return ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    return mse_uint8(a, b)  # [0, 1]-scaled, uint8-quantised, per dimension (BCM §7)


def mse_uint8(a, b):
    """Per-image per-dimension MSE on [0, 1]-scaled uint8-quantised images (BCM inversion /
    restoration MSE).

    For restoration compare against the *clean* image, not the JPEG (the authors' corrected bug,
    App. B.1.2).
    """
    qa, qb = (to_uint8(v).double() / 255 for v in (a, b))
    return ((qa - qb) ** 2).flatten(1).mean(1)
