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

import torch
from torch import nn

from bcmcore import param
from bcmcore.config import UserError
from bcmcore.nets.precond import combine, per_sample


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


def check_igct_classes(cfg):
    """iGCT is class-conditional: the number of classes of a ModelConfig, or a UserError."""
    num = int(getattr(cfg.net, "num_classes", 0) or 0)
    if num < 1:
        raise UserError("model.net.num_classes: iGCT is class-conditional, expected >= 1 classes")
    return num


class IGCTModel(nn.Module):
    """Holds `noiser_net` (no w input) and `denoiser_net` (built with guidance=True);
    docs/methods.md §2.4, Fig. 4."""

    kind = "igct"

    def __init__(self, cfg, noiser_net, denoiser_net):
        super().__init__()
        self.cfg = cfg
        self.sigma_min, self.sigma_max, self.sigma_data = (
            cfg.sigma_min,
            cfg.sigma_max,
            cfg.sigma_data,
        )
        self.noiser_rule = cfg.noiser_rule
        self.num_classes = check_igct_classes(cfg)
        self.noiser_net, self.denoiser_net = noiser_net, denoiser_net

    @property
    def net(self):  # the generator, for code that inspects `model.net` (e.g. parameter counts)
        return self.denoiser_net

    def _out(self, net, x, t, c_skip, c_out, **cond):
        F = net(
            param.append_dims(param.c_in(t, self.sigma_data), x.ndim) * x, param.c_noise(t), **cond
        )
        return combine(c_skip, x, c_out, F).to(x.dtype)

    def denoiser(self, x, t, y, w=1.0):
        """D(x, t, c, w) = c_skip(t) x + c_out(t) F(c_in x, c_noise, c, w), with D(x, sigma_min) = x
        (docs/methods.md §2.4)."""
        t, w = per_sample(t, x, "t"), per_sample(w, x, "w")
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
        t = per_sample(t, x, "t")
        c_skip, c_out = param.igct_noiser_scalings(t, self.sigma_max)
        if self.noiser_rule == "authors-eval":  # imported: the authors' eval-mode N = (T - t) F
            c_skip = torch.zeros_like(c_skip)
        return self._out(self.noiser_net, x, t, c_skip, c_out, y=y)

    def forward(self, x, t, y, w=1.0):
        """The generator direction (what `model(x, t, ...)` means for samplers): D(x, t, c, w)."""
        return self.denoiser(x, t, y, w)
