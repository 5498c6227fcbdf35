"""Per-(t, u) probe of a BCM's two directions on real data: does it denoise at t, and does its
inversion f(x_t, t, u) carry the noise up to level u (the amplifying step of zigzag, BCM Eq. 11)?

For held-out images x0 and noise z, x_t = x0 + t z. Columns (RMS over pixels and images):
  den    RMS(f(x_t, t, eps) - x0) / t      1 = no denoising at all (f returns its input)
  inv    RMS(f(x_t, t, u) - (x0 + u z)) / u   inversion error; x0 + u z is the PF-ODE flow of a
                                             point mass at x0, the exact answer as t, u -> 0
  euler  the same for D + u (x_t - D) / t, D = f(x_t, t, eps): the Euler step with the model's own
         denoiser. BCM's f is linear in u when F ignores u and equals this Euler step at u = eps
         and u = t (BCM Eq. 5), so inv == euler means the network has not learned to use u.
  cos    cosine between f(x_t, t, u) - x0 and z (1: the injected noise was amplified, 0: lost)
  rt     RMS(f(f(x_t, t, u), u, eps) - x0): one zigzag round on a real image
  ctrl   RMS(f(x0 + u z, u, eps) - x0): decoding an exactly noised image (the floor of rt)
  rel_L  RMS(f(x_t, t, u) - L) / RMS(L - x_t), L = x_t + (u - t)(x_t - D)/(t - eps): how far the
         network's inversion departs from what a u-blind network returns (docs/u_use.md). BCM Eq. 5
         is linear in u when F ignores u, and equals x_t at u = t and D at u = eps, so a u-blind net
         gives exactly L: rel_L = 0. Empty for t = eps.

Exact columns where the data span a linear subspace (the demo digits: 8x8 images upscaled
bilinearly to 16x16 span ~61 of 256 dimensions). The posterior mean lies in the subspace, so in its
orthogonal complement the PF ODE dx/dt = (x - D)/t is linear and Phi(x_t, t -> u) = (u/t) x_t
there, exactly, whatever the data distribution (EDM Eq. 3):
  den_perp  RMS(P f(x_t, t, eps)) / RMS(P x_t)          exact eps/t ~ 0; 1 = no denoising
  amp_perp  RMS(P f(x_t, t, u)) / ((u/t) RMS(P x_t))    exact 1; t/u = the noise was not amplified
  inv_perp  RMS(P f(x_t, t, u) - (u/t) P x_t) / ((u/t) RMS(P x_t))   exact 0
with P the projection onto the complement.
"""

import torch

TS = (0.002, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
US = (0.2, 0.4, 1.0, 2.0, 4.0, 8.0, 80.0)
COLUMNS = (
    "t",
    "u",
    "den",
    "inv",
    "euler",
    "cos",
    "rt",
    "ctrl",
    "rel_L",
    "den_perp",
    "amp_perp",
    "inv_perp",
)
# the (t, u) pairs that summarise u-use (docs/u_use.md): a short, a middle and a long inversion
U_USE_PAIRS = ((0.1, 1.0), (0.5, 2.0), (1.0, 4.0))


def _rms(a):
    return float(a.double().pow(2).mean().sqrt())


def data_subspace(x, rel_tol=1e-3):
    """Orthonormal basis [D, k] of the span of data x [N, ...]: right singular vectors whose
    singular value exceeds rel_tol x the largest (k = D: the data fill the space)."""
    X = x.reshape(len(x), -1).double()
    _, s, vh = torch.linalg.svd(X, full_matrices=False)
    return vh[: int((s > rel_tol * s[0]).sum())].T


def u_blind_target(x_t, d, t, u, eps):
    """L = x_t + (u - t)(x_t - D)/(t - eps): f(x_t, t, u) of a network whose F ignores u (BCM Eq. 5
    is then linear in u, with f = D at u = eps and f = x_t at u = t)."""
    return x_t + (u - t) * (x_t - d) / (t - eps)


def rel_l(x_u, x_t, d, t, u, eps):
    """RMS(f(x_t, t, u) - L) / RMS(L - x_t) over the batch: 0 for a u-blind network."""
    ell = u_blind_target(x_t, d, t, u, eps)
    num, den = _rms(x_u - ell), _rms(ell - x_t)
    if den == 0:  # D = x_t: no denoising, L = x_t; f = x_t for every u is u-blind too
        return 0.0 if num == 0 else float("inf")
    return num / den


def u_use_summary(rows, pairs=U_USE_PAIRS):
    """{"rel_L_t<t>_u<u>": value for each summary pair, "rel_L_max": max over every probed pair}."""
    found = {(r["t"], r["u"]): r["rel_L"] for r in rows if "rel_L" in r}
    out = {f"rel_L_t{t:g}_u{u:g}": found.get((t, u), float("nan")) for t, u in pairs}
    out["rel_L_max"] = max(found.values(), default=float("nan"))
    return out


def _perp(a, basis):
    a = a.reshape(len(a), -1).double()
    return a - (a @ basis) @ basis.T


@torch.no_grad()
def inversion_probe(model, x0, y=None, ts=TS, us=US, seed=0, basis=None):
    """Rows {t, u, den, inv, euler, cos, rt, ctrl[, rel_L][, *_perp]} for every u > t (module
    docstring); the *_perp columns need `basis`, the data's subspace (`data_subspace`) of
    dimension < D."""
    if basis is not None and basis.shape[1] >= basis.shape[0]:
        basis = None  # the data fill the space: no exact columns
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(x0)
    eps = float(model.sigma_min)

    def f(x, t, u):
        full = lambda v: torch.full((len(x),), float(v), device=x.device)  # noqa: E731
        return model(x, full(t), full(u), y=y)

    rows = []
    for t in ts:
        x_t = x0 + t * z
        d = f(x_t, t, eps)
        den = _rms(d - x0) / t
        for u in us:
            if u <= t:
                continue
            x_u, ref = f(x_t, t, u), x0 + u * z
            euler = d + u * (x_t - d) / t
            cos = torch.nn.functional.cosine_similarity(
                (x_u - x0).flatten(1).double(), z.flatten(1).double()
            )
            rows.append(
                {
                    "t": t,
                    "u": u,
                    "den": den,
                    "inv": _rms(x_u - ref) / u,
                    "euler": _rms(euler - ref) / u,
                    "cos": float(cos.mean()),
                    "rt": _rms(f(x_u, u, eps) - x0),
                    "ctrl": _rms(f(ref, u, eps) - x0),
                }
            )
            if t > eps:
                rows[-1]["rel_L"] = rel_l(x_u, x_t, d, t, u, eps)
            if basis is not None:
                p_t, p_d, p_u = (_perp(a, basis) for a in (x_t, d, x_u))
                scale = _rms(p_t)
                rows[-1].update(
                    den_perp=_rms(p_d) / scale,
                    amp_perp=_rms(p_u) / (u / t * scale),
                    inv_perp=_rms(p_u - u / t * p_t) / (u / t * scale),
                )
    return rows
