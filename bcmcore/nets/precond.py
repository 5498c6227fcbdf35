"""Preconditioning wrappers: consistency models (CM / BCM) and the EDM denoiser.

Scalings and the final combination c_skip x + c_out F run in float32 even under autocast:
|c_skip|, |c_out| reach ~23 / ~79 on long inverse jumps (docs/methods.md §2).
"""

import torch
from torch import nn

from bcmcore import param


def per_sample(v, x, name="t"):
    """A float or [B] tensor (a time, or iGCT's w) as a [B] tensor on x's device: float64 stays
    float64, anything else becomes float32."""
    v = torch.as_tensor(v, device=x.device)
    v = v.float() if v.dtype != torch.float64 else v
    v = v.expand(x.shape[0]) if v.ndim == 0 else v
    if v.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must be a float or a [B] tensor, got shape {tuple(v.shape)} for batch "
            f"{x.shape[0]}"
        )
    return v


def combine(c_skip, x, c_out, F):
    """c_skip x + c_out F in fp32 (or fp64 if x is), outside autocast."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        dt = torch.promote_types(x.dtype, torch.float32)
        return param.append_dims(c_skip, x.ndim).to(dt) * x.to(dt) + param.append_dims(
            c_out, x.ndim
        ).to(dt) * F.to(dt)


class ConsistencyModel(nn.Module):
    """f(x, t, u) = c_skip(t,u) x + c_out(t,u) F(c_in(t) x, c_noise(t), c_noise(u), y).

    kind "cm": Song et al. 2023 scalings (f(x, sigma_min) = x), u must be sigma_min.
    kind "bcm": BCM Eq. 5, f(x, t, t) = x for every t; u = None means sigma_min ("time 0", BCM fn.
    2).
    """

    def __init__(self, cfg, net):
        super().__init__()
        self.cfg, self.kind = cfg, cfg.kind
        self.sigma_min, self.sigma_max, self.sigma_data = (
            cfg.sigma_min,
            cfg.sigma_max,
            cfg.sigma_data,
        )
        self.net = net

    def forward(self, x, t, u=None, y=None):
        t = per_sample(t, x)
        if self.kind == "cm":
            if u is not None and not bool((per_sample(u, x) == self.sigma_min).all()):
                raise ValueError(
                    "a CM model maps only to u = sigma_min; use a BCM model for other u"
                )
            c_skip, c_out = param.cm_scalings(t, self.sigma_min, self.sigma_data)  # CM App. C
            c_u = None
        else:
            u = per_sample(self.sigma_min if u is None else u, x)
            c_skip, c_out = param.bcm_scalings(t, u, self.sigma_data)  # BCM Eq. 5
            # c_skip(t, t) = 1 and c_out(t, t) = 0 exactly, so f(x, t, t) = x bit for bit (BCM Eq.
            # 45)
            c_skip = torch.where(t == u, torch.ones_like(c_skip), c_skip)
            c_u = param.c_noise(u)
        x_in = param.append_dims(param.c_in(t, self.sigma_data), x.ndim) * x
        F = self.net(x_in.to(x.dtype), param.c_noise(t), c_u, y)
        return combine(c_skip, x, c_out, F)


class EDMDenoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise(sigma), y) (EDM Table 1)."""

    def __init__(self, cfg, net):
        super().__init__()
        self.cfg, self.kind = cfg, cfg.kind
        self.sigma_min, self.sigma_max, self.sigma_data = (
            cfg.sigma_min,
            cfg.sigma_max,
            cfg.sigma_data,
        )
        self.net = net

    def forward(self, x, sigma, y=None):
        sigma = per_sample(sigma, x)
        c_skip, c_out = param.edm_scalings(sigma, self.sigma_data)
        x_in = param.append_dims(param.c_in(sigma, self.sigma_data), x.ndim) * x
        F = self.net(x_in.to(x.dtype), param.c_noise(sigma), None, y)
        return combine(c_skip, x, c_out, F)
