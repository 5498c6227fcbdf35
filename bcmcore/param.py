"""Noise-level conventions and parameterisations of iCT, BCM, EDM and iGCT.

Time = noise level (EDM/VE): x_t = x + t z. "Time 0" is sigma_min (BCM footnote 2).
Everything here is pure arithmetic on tensors; scalings are always evaluated in float32 or wider,
even under autocast, because |c_skip|, |c_out| reach ~23 / ~79 on long inverse jumps
(docs/methods.md §2).
"""

import math

import torch

SIGMA_MIN = 0.002  # epsilon, iCT / BCM
SIGMA_MAX = 80.0  # T
SIGMA_DATA = 0.5  # data in [-1, 1]
RHO = 7.0  # Karras spacing exponent
P_MEAN = -1.1  # iCT lognormal noise-level distribution
P_STD = 2.0


def _f32(t):
    t = torch.as_tensor(t)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


# ----------------------------------------------------------------------------------------------
# Discretisation and curriculum (iCT §3, docs/methods.md §3)


def karras_grid(n_points, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, dtype=torch.float64):
    """Increasing Karras grid with n_points points: grid[0] = sigma_min, grid[-1] = sigma_max (EDM
    Eq. 5)."""
    if n_points < 2:
        raise ValueError(f"karras_grid needs at least 2 points, got {n_points}")
    i = torch.arange(n_points, dtype=torch.float64) / (n_points - 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    grid = (lo + i * (hi - lo)) ** rho
    grid[0], grid[-1] = sigma_min, sigma_max  # exact endpoints despite the pow round trip
    return grid.to(dtype)


def lognormal_interval_mass(grid, P_mean=P_MEAN, P_std=P_STD):
    """iCT's discretised lognormal: mass of interval (grid[n], grid[n+1]), normalised (iCT §3.5)."""
    g = torch.as_tensor(grid, dtype=torch.float64)
    cdf = torch.erf((torch.log(g) - P_mean) / (math.sqrt(2.0) * P_std))
    mass = cdf[1:] - cdf[:-1]
    return mass / mass.sum()


def ict_num_points(step, total_steps, s0=10, s1=1280):
    """iCT exponential curriculum: grid points N(k) = min(s0 2^floor(k/K'), s1) + 1 (iCT Eq. 8)."""
    k_prime = math.floor(total_steps / (math.floor(math.log2(math.floor(s1 / s0))) + 1))
    k_prime = max(k_prime, 1)
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def phased_num_points(step, phases):
    """Piecewise-constant curriculum, e.g. BCM fine-tuning phases or LSUN's uneven stages.

    phases: sequence of (n_steps, n_intervals); the last phase extends forever. Returns grid points.
    """
    for n_steps, n_intervals in phases:
        if step < n_steps:
            return int(n_intervals) + 1
        step -= n_steps
    return int(phases[-1][1]) + 1


def ect_r(t, stage, q=2.0, k=8.0, b=1.0):
    """ECT's continuous partner level r(t) = max(0, t (1 - q^-s (1 + k sigmoid(-b t))))
    (docs/methods.md §3)."""
    t = _f32(t)
    return torch.clamp(t * (1 - q ** (-stage) * (1 + k * torch.sigmoid(-b * t))), min=0.0)


# ----------------------------------------------------------------------------------------------
# Parameterisations


def c_in(t, sigma_data=SIGMA_DATA):
    """Input scaling 1/sqrt(t^2 + sd^2) (EDM Table 1; BCM Eq. 5 keeps it t-only)."""
    t = _f32(t)
    return 1 / torch.sqrt(t**2 + sigma_data**2)


def c_noise(t):
    """Noise conditioning 0.25 ln t (EDM); ADM nets scale it by 1000 internally (= 250 ln t)."""
    return 0.25 * torch.log(_f32(t).clamp_min(1e-44))


def cm_scalings(t, sigma_min=SIGMA_MIN, sigma_data=SIGMA_DATA):
    """CM boundary-condition scalings, f(x, sigma_min) = x (Song et al. 2023, App. C)."""
    t = _f32(t)
    c_skip = sigma_data**2 / ((t - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (t - sigma_min) / torch.sqrt(t**2 + sigma_data**2)
    return c_skip, c_out


def bcm_scalings(t, u, sigma_data=SIGMA_DATA):
    """BCM Eq. 5: c_skip = (sd^2 + t u)/(sd^2 + t^2), c_out = sd (t - u)/sqrt(sd^2 + t^2),
    signed."""
    t, u = _f32(t), _f32(u)
    c_skip = (sigma_data**2 + t * u) / (sigma_data**2 + t**2)
    c_out = sigma_data * (t - u) / torch.sqrt(sigma_data**2 + t**2)
    return c_skip, c_out


def edm_scalings(sigma, sigma_data=SIGMA_DATA):
    """EDM denoiser scalings c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2) (EDM Table 1)."""
    sigma = _f32(sigma)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out


def igct_noiser_scalings(t, sigma_max=SIGMA_MAX):
    """iGCT noiser N(x, t) = x + (T - t) F: boundary N(x, T) = x (docs/methods.md §2.4; train-mode
    rule)."""
    t = _f32(t)
    return torch.ones_like(t), sigma_max - t


def pseudo_huber(a, b, c):
    """Pseudo-Huber metric sqrt(||a - b||^2 + c^2) - c per sample (iCT §3.3); c = 0.00054
    sqrt(D)."""
    diff = (a - b).flatten(1).float()
    return torch.sqrt((diff**2).sum(1) + c**2) - c


def huber_c(dim):
    """iCT's pseudo-Huber constant for data dimension D: c = 0.00054 sqrt(D)."""
    return 0.00054 * math.sqrt(dim)


def append_dims(v, ndim):
    """Broadcast a per-sample vector [B] against a tensor of ndim dimensions."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))
