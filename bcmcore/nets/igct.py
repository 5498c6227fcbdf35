"""iGCT model: a noiser N(x, t, c) and a guided denoiser D(x, t, c, w), two nets of one architecture
(docs/methods.md §2.4).

Parameterisations (docs/methods.md §2.4). The authors switch rules between train and eval mode; we
use ONE rule in both modes, the one whose boundary condition the paper states, so that sampling runs
the trained function:
  * denoiser: CM boundary rule, D(x, sigma_min) = x (Song et al. 2023 App. C; `param.cm_scalings`).
    The authors' train-mode EDM rule differs from it only by the sigma_min = 0.002 shift of c_skip /
    c_out.
  * noiser: N = x + (T - t) F, boundary N(x, T) = x (`param.igct_noiser_scalings`). The authors'
    eval rule drops the `x` term (c_skip = 0), which breaks that boundary and is not the map the
    reconstruction loss trained. A model imported from the authors' checkpoints records their rule,
    `cfg.noiser_rule = "authors-eval"` (N = (T - t) F), and keeps it, so that it reproduces their
    outputs (docs/imports.md).
Guidance w is in the paper convention (w = 1: no guidance) here and in the raw net's interface
(docs/interfaces.md).
"""

import dataclasses

import torch
from torch import nn

from bcmcore import param
from bcmcore.config import UserError


def _per_sample(v, x, name):
    """A float or [B] tensor -> float32 [B] on x's device."""
    v = torch.as_tensor(v, dtype=torch.float32, device=x.device)
    if v.ndim == 0:
        v = v.expand(x.shape[0])
    if v.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must be a float or a [B] tensor, got shape {tuple(v.shape)} for batch "
            f"{x.shape[0]}"
        )
    return v


def check_w(w):
    """Guidance weights must be finite and >= 1 (paper convention, w = 1: plain conditional)."""
    wt = torch.as_tensor(w, dtype=torch.float64)
    if not torch.isfinite(wt).all() or (wt < 1).any():
        bad = wt[~torch.isfinite(wt) | (wt < 1)].flatten()[0].item()
        raise UserError(
            f"guidance weight w must be a finite number >= 1 (w = 1 means no guidance), got {bad}"
        )
    return w


def check_labels(y, num_classes, what="class label"):
    """Class indices must lie in [0, num_classes)."""
    if y is None:
        raise UserError(
            f"this model is class-conditional: a {what} in 0..{num_classes - 1} is required"
        )
    y = torch.as_tensor(y)
    if y.is_floating_point() or ((y < 0) | (y >= num_classes)).any():
        bad = y[(y < 0) | (y >= num_classes)].flatten()
        raise UserError(
            f"{what} must be an integer in 0..{num_classes - 1}, got "
            f"{bad[0].item() if bad.numel() else y.dtype}"
        )
    return y.long()


class IGCTModel(nn.Module):
    """Holds `noiser_net` (no w input) and `denoiser_net` (built with guidance=True);
    docs/methods.md §2.4, Fig. 4."""

    kind = "igct"

    def __init__(self, cfg):
        super().__init__()
        from bcmcore.nets import build_net  # lazy: bcmcore.nets builds this class for kind "igct"

        self.cfg = cfg
        self.sigma_min, self.sigma_max, self.sigma_data = (
            cfg.sigma_min,
            cfg.sigma_max,
            cfg.sigma_data,
        )
        self.noiser_rule = cfg.noiser_rule
        self.num_classes = int(getattr(cfg.net, "num_classes", 0) or 0)
        if self.num_classes < 1:
            raise UserError(
                "model.net.num_classes: iGCT is class-conditional, expected >= 1 classes"
            )
        self.noiser_net = build_net(dataclasses.replace(cfg.net, guidance=False))
        self.denoiser_net = build_net(dataclasses.replace(cfg.net, guidance=True))

    @property
    def net(self):  # the generator, for code that inspects `model.net` (e.g. parameter counts)
        return self.denoiser_net

    def _out(self, net, x, t, c_skip, c_out, **cond):
        c_skip, c_out = (param.append_dims(c, x.ndim) for c in (c_skip, c_out))
        F = net(
            param.append_dims(param.c_in(t, self.sigma_data), x.ndim) * x, param.c_noise(t), **cond
        )
        return (c_skip * x + c_out * F.float()).to(x.dtype)

    def denoiser(self, x, t, y, w=1.0):
        """D(x, t, c, w) = c_skip(t) x + c_out(t) F(c_in x, c_noise, c, w), with D(x, sigma_min) = x
        (docs/methods.md §2.4)."""
        t, w = _per_sample(t, x, "t"), _per_sample(w, x, "w")
        return self._out(
            self.denoiser_net,
            x,
            t,
            *param.cm_scalings(t, self.sigma_min, self.sigma_data),
            y=y,
            w=w,
        )

    def noiser(self, x, t, y):
        """N(x, t, c) = x + (T - t) F(c_in x, c_noise, c), with N(x, T) = x (docs/methods.md §2.4,
        §7.3)."""
        t = _per_sample(t, x, "t")
        c_skip, c_out = param.igct_noiser_scalings(t, self.sigma_max)
        if self.noiser_rule == "authors-eval":  # imported: the authors' eval-mode N = (T - t) F
            c_skip = torch.zeros_like(c_skip)
        return self._out(self.noiser_net, x, t, c_skip, c_out, y=y)

    def forward(self, x, t, y, w=1.0):
        """The generator direction (what `model(x, t, ...)` means for samplers): D(x, t, c, w)."""
        return self.denoiser(x, t, y, w)
