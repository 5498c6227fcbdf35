"""U-Net building blocks shared by NCSN++ and ADM: FIR / box resampling, residual block, attention.

One ResBlock and one Attention class serve both nets; the differences are options:
  NCSN++ (Song et al. 2021, BigGAN blocks): FIR [1,3,3,1] resampling, 1x1 skip on resampling,
    skip_rescale, GroupNorm(min(C/4, 32), eps 1e-6), single-head attention over C channels.
  ADM (Dhariwal & Nichol 2021 with iCT/BCM changes): box resampling (avg-pool / nearest), identity
    skip when widths match, GroupNorm(32, eps 1e-5) in fp32, no AdaGN, 64-channel heads with q/k/v
    RMS-normalised (docs/methods.md §12.2). EDM's DhariwalUNet keeps AdaGN and plain attention.
Initialisation follows the authors: NCSN++ Xavier-uniform (fan_avg) weights with zero biases
(score-SDE default_init); ADM PyTorch's default layer init (the BCM/iCT code; EDM's kaiming_uniform
with gain sqrt(1/3) is the same distribution). Both zero the output convs (init_scale 0 /
zero_module).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv(c_in, c_out, k=3, zero=False, style="ncsnpp"):
    """Conv2d: NCSN++ Xavier-uniform (fan_avg) weights and zero bias, ADM PyTorch's default init;
    zero=True (all zeros) for NCSN++ init_scale 0 / ADM zero_module."""
    m = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    if zero or style == "ncsnpp":
        nn.init.zeros_(m.weight) if zero else nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)
    return m


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in fp32 (ADM's GroupNorm32), returned in the input dtype."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def norm(c, style):
    if style == "ncsnpp":
        return GroupNorm32(min(c // 4, 32), c, eps=1e-6)
    return GroupNorm32(32, c, eps=1e-5)


# ----------------------------------------------------------------------------------------------
# Resampling (score-SDE upfirdn2d semantics with the separable FIR kernel [1,3,3,1])


def _fir_kernel(x, gain):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device=x.device, dtype=x.dtype)
    k2 = torch.outer(k, k)
    k2 = k2 / k2.sum() * gain
    return k2.expand(x.shape[1], 1, 4, 4)


def fir_down(x):
    """FIR-filter then keep every second pixel (upfirdn2d down=2, pad (1, 1))."""
    return F.conv2d(F.pad(x, (1, 1, 1, 1)), _fir_kernel(x, 1.0), stride=2, groups=x.shape[1])


def fir_up(x):
    """Zero-insert 2x, then FIR-filter with gain 4 (upfirdn2d up=2, pad (2, 1))."""
    B, C, H, W = x.shape
    z = x.new_zeros(B, C, 2 * H, 2 * W)
    z[:, :, ::2, ::2] = x
    return F.conv2d(F.pad(z, (2, 1, 2, 1)), _fir_kernel(x, 4.0), groups=C)


def box_down(x):
    return F.avg_pool2d(x, 2)


def box_up(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


class FIRConvDown(nn.Module):
    """Strided 3x3 conv after FIR filtering (score-SDE conv_downsample_2d): NCSN++'s residual input
    pyramid."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(c_out, c_in, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x):
        x = F.conv2d(F.pad(x, (2, 2, 2, 2)), _fir_kernel(x, 1.0), groups=x.shape[1])
        return F.conv2d(x, self.weight, self.bias, stride=2)


# ----------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """norm-act-[resample]-conv, + Dense(act(emb)), norm-act-dropout-conv; skip; optional
    /sqrt(2)."""

    def __init__(self, c_in, c_out, emb_dim, dropout, style, up=False, down=False, adagn=False):
        super().__init__()
        self.ncsnpp, self.adagn = style == "ncsnpp", adagn
        self.up, self.down = up, down
        self.norm0 = norm(c_in, style)
        self.conv0 = conv(c_in, c_out, style=style)
        self.emb = nn.Linear(emb_dim, 2 * c_out if adagn else c_out)  # AdaGN: (scale, shift)
        if self.ncsnpp:
            nn.init.zeros_(self.emb.bias)
        self.norm1 = norm(c_out, style)
        self.drop = nn.Dropout(dropout)
        self.conv1 = conv(c_out, c_out, zero=True)
        need_skip = c_in != c_out or (self.ncsnpp and (up or down))
        self.skip = conv(c_in, c_out, k=1, style=style) if need_skip else None

    def resample(self, x):
        if self.up:
            return fir_up(x) if self.ncsnpp else box_up(x)
        if self.down:
            return fir_down(x) if self.ncsnpp else box_down(x)
        return x

    def forward(self, x, emb):
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        e = self.emb(F.silu(emb)).to(h.dtype)[:, :, None, None]
        if self.adagn:  # ADM's scale-shift norm: GN(h) (1 + scale) + shift (Dhariwal & Nichol §3)
            scale, shift = e.chunk(2, dim=1)
            h = self.norm1(h) * (1 + scale) + shift
        else:
            h = self.norm1(h + e)
        h = self.conv1(self.drop(F.silu(h)))
        x = self.resample(x)
        x = self.skip(x) if self.skip is not None else x
        return (x + h) / math.sqrt(2) if self.ncsnpp else x + h


class Attention(nn.Module):
    """Self-attention over pixels: NCSN++ one head, skip_rescale; ADM 64-ch heads with cosine (RMS)
    q/k/v."""

    def __init__(self, c, style, head_channels=None, cosine=True):
        super().__init__()
        self.ncsnpp = style == "ncsnpp"
        self.cosine = cosine and not self.ncsnpp
        self.heads = 1 if self.ncsnpp else c // head_channels
        self.norm = norm(c, style)
        self.qkv = conv(c, 3 * c, k=1, style=style)
        self.proj = conv(c, c, k=1, zero=True)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, d]
        if self.cosine:  # BCM/iCT repro: x / (1e-4 + ||x|| / sqrt(d)) on q, k and v (methods §12.2)
            q, k, v = (
                a
                / (1e-4 + a.float().norm(dim=-1, keepdim=True).to(a.dtype) / math.sqrt(a.shape[-1]))
                for a in (q, k, v)
            )
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        h = self.proj(h.transpose(-1, -2).reshape(B, C, H, W))
        return (x + h) / math.sqrt(2) if self.ncsnpp else x + h
