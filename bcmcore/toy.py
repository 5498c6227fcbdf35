"""Isotropic Gaussian mixtures: exact denoiser, score and PF-ODE flow map (ground truth for tests).

Under x_t = x + t z the marginal of a mixture sum_k pi_k N(mu_k, s_k^2 I) is sum_k pi_k N(mu_k,
(s_k^2 + t^2) I), so the ideal denoiser D(x, t) = E[x_0 | x_t] is closed-form and the PF ODE dx/dt =
(x - D(x, t)) / t (EDM Eq. 3 with sigma(t) = t) can be solved to any accuracy with scipy.
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.special import logsumexp


@dataclass(frozen=True)
class GaussianMixture:
    means: tuple  # K tuples of length d
    stds: tuple  # K per-component isotropic stds
    weights: tuple  # K mixture weights, summing to 1

    def __post_init__(self):
        """A mixture that exists: K means of one dimension, stds >= 0 (0: a point mass), weights
        >= 0 summing to 1, all finite (a negative std would sample a reflected mixture whose
        denoiser is wrong)."""
        dims = sorted({len(m) for m in self.means})
        if len(dims) > 1:
            raise ValueError(f"means: expected K means of one dimension, got lengths {dims}")
        mu, s, pi = (np.asarray(a, np.float64) for a in self.arrays())
        k = len(pi)
        if mu.ndim != 2 or len(mu) != k or s.shape != (k,) or pi.shape != (k,) or k == 0:
            raise ValueError(
                f"means, stds, weights: expected K means of one dimension, K stds and K weights, "
                f"got {len(self.means)} means, {len(self.stds)} stds, {len(self.weights)} weights"
            )
        if not (np.isfinite(mu).all() and np.isfinite(s).all() and np.isfinite(pi).all()):
            raise ValueError("means, stds, weights: expected finite numbers")
        if (s < 0).any():
            raise ValueError(f"stds: expected numbers >= 0, got {list(self.stds)}")
        if (pi < 0).any() or abs(pi.sum() - 1) > 1e-6:
            raise ValueError(
                f"weights: expected numbers >= 0 summing to 1, got {list(self.weights)}"
            )

    @property
    def dim(self):
        return len(self.means[0])

    def arrays(self):
        return (
            np.asarray(self.means, np.float64),
            np.asarray(self.stds, np.float64),
            np.asarray(self.weights, np.float64),
        )

    def to_dict(self):
        return {
            "means": [list(m) for m in self.means],
            "stds": list(self.stds),
            "weights": list(self.weights),
        }

    @classmethod
    def from_dict(cls, d):
        return cls(tuple(tuple(m) for m in d["means"]), tuple(d["stds"]), tuple(d["weights"]))

    def sample(self, n, rng):
        """n samples (float64 [n, d]) and component labels, from a numpy Generator."""
        mu, s, pi = self.arrays()
        k = rng.choice(len(pi), size=n, p=pi)
        return mu[k] + s[k, None] * rng.standard_normal((n, self.dim)), k

    def posterior(self, x, t):
        """Component responsibilities r_k(x, t) under the noised marginal (float64 [n, K])."""
        mu, s, pi = self.arrays()
        var = s**2 + np.asarray(t, np.float64).reshape(-1, 1) ** 2  # [n, K]
        sq = ((x[:, None, :] - mu[None]) ** 2).sum(-1)  # [n, K]
        logp = np.log(pi) - 0.5 * self.dim * np.log(2 * np.pi * var) - 0.5 * sq / var
        return np.exp(logp - logsumexp(logp, axis=1, keepdims=True))

    def denoise(self, x, t):
        """Ideal denoiser D(x, t) = sum_k r_k (mu_k + s_k^2/(s_k^2 + t^2) (x - mu_k))."""
        mu, s, _ = self.arrays()
        x = np.asarray(x, np.float64)
        t = np.broadcast_to(np.asarray(t, np.float64), (x.shape[0],))
        r = self.posterior(x, t)
        gain = s[None] ** 2 / (s[None] ** 2 + t[:, None] ** 2)  # [n, K]
        comp = mu[None] + gain[..., None] * (x[:, None, :] - mu[None])  # [n, K, d]
        return (r[..., None] * comp).sum(1)

    def score(self, x, t):
        """grad log p_t(x) = (D(x, t) - x) / t^2 (Tweedie)."""
        t = np.broadcast_to(np.asarray(t, np.float64), (np.asarray(x).shape[0],))[:, None]
        return (self.denoise(x, t[:, 0]) - x) / t**2

    def flow(self, x, t_from, t_to, rtol=1e-9, atol=1e-9):
        """Exact PF-ODE flow map Phi(x, t_from -> t_to), per sample, in either direction.

        Integrated in log-time s = ln t, where dx/ds = x - D(x, e^s) is smooth over 0.002 .. 80.
        """
        x = np.asarray(x, np.float64)
        n = x.shape[0]
        t_from = np.broadcast_to(np.asarray(t_from, np.float64), (n,))
        t_to = np.broadcast_to(np.asarray(t_to, np.float64), (n,))
        out = np.empty_like(x)
        # Group samples sharing a (t_from, t_to) pair so each pair is one vectorised solve.
        pairs = np.stack([t_from, t_to], 1)
        for pair in np.unique(pairs, axis=0):
            idx = np.flatnonzero((pairs == pair).all(1))
            if pair[0] == pair[1]:
                out[idx] = x[idx]
                continue
            m = len(idx)

            def rhs(s, y, m=m):
                xs = y.reshape(m, -1)
                return (xs - self.denoise(xs, np.exp(s))).ravel()

            sol = solve_ivp(
                rhs,
                (np.log(pair[0]), np.log(pair[1])),
                x[idx].ravel(),
                method="DOP853",
                rtol=rtol,
                atol=atol,
            )
            if not sol.success:
                raise RuntimeError(f"PF-ODE solve failed: {sol.message}")
            out[idx] = sol.y[:, -1].reshape(m, -1)
        return out


DEMO_GMM = GaussianMixture(
    means=((-1.0, -1.0), (1.0, 1.0), (1.0, -1.0), (-0.5, 1.0)),
    stds=(0.15, 0.2, 0.1, 0.25),
    weights=(0.3, 0.3, 0.2, 0.2),
)


class ExactFlowMap(torch.nn.Module):
    """A "consistency model" that *is* the exact flow map: f(x, t, u) = Phi(x, t -> u).

    Lets tests check samplers and inversion independently of training. Counts its calls in `nfe`.
    """

    kind = "bcm"

    def __init__(self, gmm, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5):
        super().__init__()
        self.gmm, self.sigma_min, self.sigma_max, self.sigma_data = (
            gmm,
            sigma_min,
            sigma_max,
            sigma_data,
        )
        self.nfe = 0

    def forward(self, x, t, u=None, y=None):
        self.nfe += 1
        n = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64).expand(n)
        u = (
            torch.full((n,), self.sigma_min, dtype=torch.float64)
            if u is None
            else torch.as_tensor(u, dtype=torch.float64).expand(n)
        )
        flat = x.detach().double().cpu().reshape(n, -1).numpy()  # images: their flattened pixels
        out = self.gmm.flow(flat, t.cpu().numpy(), u.cpu().numpy())
        return torch.as_tensor(out, dtype=x.dtype, device=x.device).reshape(x.shape)


class ExactDenoiser(torch.nn.Module):
    """The mixture's ideal denoiser as an EDM-kind network D(x, sigma, y): the exact teacher of
    consistency distillation (bcmcore/losses/cd.py) on the toy."""

    kind = "edm"

    def __init__(self, gmm):
        super().__init__()
        self.gmm = gmm

    def forward(self, x, sigma, y=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        d = self.gmm.denoise(x.detach().double().cpu().numpy(), sigma.cpu().numpy())
        return torch.as_tensor(d, dtype=x.dtype, device=x.device)
