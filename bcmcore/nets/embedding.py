"""Noise-level, two-time, class and guidance embeddings shared by every architecture.

One module, `TimeEmbedding`, covers all three ways of conditioning on (t, u):
  single  : emb = MLP_t(feat(c_t))                               CM / iCT
  concat  : emb = MLP_tu([feat(c_t), feat(c_u)]), MLP 2x wide     BCM from scratch (C.1, NCSN++)
  project : emb = W_align [MLP_t(feat(c_t)), MLP_u(feat(c_u))]    BCM fine-tuning (§3.2), no bias
`project` initialised with W_align = [I | 0] and MLP_u = copy of MLP_t reproduces `single` exactly
(see `bcmcore.nets.finetune.bcm_from_cm`).
"""

import math

import torch
from torch import nn


class FourierFeatures(nn.Module):
    """Fixed Gaussian Fourier features [sin(2 pi W c), cos(2 pi W c)], W ~ N(0, s^2) (NCSN++; iCT
    uses s = 0.02)."""

    def __init__(self, dim, scale):
        super().__init__()
        # a buffer, not a parameter: fixed (not trained) but saved, so a reloaded net embeds
        # identically
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, c):
        a = 2 * math.pi * c.float()[:, None] * self.W[None]
        return torch.cat([a.sin(), a.cos()], dim=1)


class PositionalFeatures(nn.Module):
    """ADM sinusoidal embedding [cos | sin] of 1000 c (= 250 ln t), freqs exp(-ln(1e4) k / (dim/2))
    (docs/methods.md §12.3)."""

    def __init__(self, dim, scale=1000.0):
        super().__init__()
        self.dim, self.scale = dim, scale

    def forward(self, c):
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=c.device, dtype=torch.float32) / half
        )
        a = self.scale * c.float()[:, None] * freqs[None]
        return torch.cat([a.cos(), a.sin()], dim=1)


def features(kind, dim, fourier_scale, positional_scale=1000.0):
    if kind == "fourier":
        return FourierFeatures(dim, fourier_scale)
    return PositionalFeatures(dim, positional_scale)


def mlp2(d_in, d_out):
    """Dense -> SiLU -> Dense: the time MLP of NCSN++ and ADM."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


class TimeEmbedding(nn.Module):
    """Embeds c_t = c_noise(t) (and c_u for two-time nets) into a vector of size `out_dim`."""

    def __init__(
        self, kind, feat_dim, emb_dim, mode="single", fourier_scale=0.02, positional_scale=1000.0
    ):
        super().__init__()
        if mode not in ("single", "concat", "project"):
            raise ValueError(f"unknown two-time embedding mode {mode!r}")
        self.mode = mode
        self.feat = features(
            kind, feat_dim, fourier_scale, positional_scale
        )  # one fixed feature map shared by t and u
        if (
            mode == "concat"
        ):  # BCM from scratch: concatenated features, both dense layers twice as wide
            self.mlp_t = mlp2(2 * feat_dim, 2 * emb_dim)
            self.out_dim = 2 * emb_dim
        else:
            self.mlp_t = mlp2(feat_dim, emb_dim)
            self.out_dim = emb_dim
        # BCM fine-tuning: untied u-MLP + bias-free W_align (docs/methods.md §6)
        if mode == "project":
            self.mlp_u = mlp2(feat_dim, emb_dim)
            self.align = nn.Linear(2 * emb_dim, emb_dim, bias=False)

    @property
    def in_dim(self):
        """Width of the time MLP's input: the features of t (or of [t, u] for concat)."""
        return self.mlp_t[0].in_features

    def forward(self, c_t, c_u=None, pre=None):
        """`pre` ([B, in_dim], optional) joins the features before the t-MLP (NCSN++ class, w)."""
        add = (lambda f: f) if pre is None else (lambda f: f + pre)
        if self.mode == "single":
            if c_u is not None:
                raise ValueError(
                    "this network embeds one time only; build it with two_time=True to pass c_u"
                )
            return self.mlp_t(add(self.feat(c_t)))
        if c_u is None:
            raise ValueError("this two-time network needs c_u = c_noise(u)")
        if self.mode == "concat":
            return self.mlp_t(add(torch.cat([self.feat(c_t), self.feat(c_u)], dim=1)))
        e_t, e_u = self.mlp_t(add(self.feat(c_t))), self.mlp_u(self.feat(c_u))
        return self.align(torch.cat([e_t, e_u], dim=1))

    @torch.no_grad()
    def init_identity_zero(self):
        """W_align = [I | 0]: columns of e_t get the identity, those of e_u zeros (docs/methods.md
        §6)."""
        d = self.align.out_features
        self.align.weight.zero_()
        self.align.weight[:, :d].copy_(torch.eye(d))


def guidance_features(w, dim=256):
    """VDM/LCM guidance embedding of w_code = w - 1 (paper convention w = 1: none): sin first
    (docs/methods.md §12.4).

    fp32 in the authors' operation order (the scalar ln(1e4) / (half - 1) first): the arguments
    reach ~14,000 rad at w = 15, where another order moves e(w) by ~1e-3 (docs/imports.md).
    """
    half = dim // 2
    s = 1000.0 * (w.float() - 1.0)
    f = torch.exp(
        torch.arange(half, device=w.device, dtype=torch.float32) * -(math.log(1e4) / (half - 1))
    )
    a = s[:, None] * f[None]
    return torch.cat([a.sin(), a.cos()], dim=1)


class CondEmbedding(nn.Module):
    """Class embedding (label -1 = null class, for CFG) plus optional guidance-w embedding.

    label_bias=False (ADM: a bias-free linear layer on the one-hot): the null class embeds to zero.
    label_bias=True (NCSN++, EDM's SongUNet: a biased linear layer on sqrt(K) one-hot, so
    E[k] = sqrt(K) W[:, k] + b): a shared bias b is added, and the null class (all-zero one-hot in
    EDM's label dropout) embeds to b.
    """

    def __init__(self, num_classes, guidance, dim, w_feat_dim=256, label_bias=False):
        super().__init__()
        self.num_classes = num_classes
        self.label = nn.Embedding(num_classes, dim) if num_classes > 0 else None
        self.label_bias = nn.Parameter(torch.zeros(dim)) if label_bias and num_classes > 0 else None
        self.w_proj = nn.Linear(w_feat_dim, dim) if guidance else None
        self.w_feat_dim = w_feat_dim

    def forward(self, y, w, batch, device):
        """Returns the vector to add to the time embedding, or None when the net is
        unconditional."""
        out = None
        if self.label is not None:
            if y is None:
                y = torch.full((batch,), -1, dtype=torch.long, device=device)
            keep = (y >= 0).unsqueeze(1)
            out = self.label(y.clamp_min(0)) * keep  # null label: zero (+ the bias below)
            if self.label_bias is not None:
                out = out + self.label_bias
        elif y is not None and bool((y >= 0).any()):
            raise ValueError("class labels given to an unconditional network (num_classes = 0)")
        if self.w_proj is not None:
            if w is None:
                raise ValueError(
                    "this guided network needs w (paper convention, w = 1: no guidance)"
                )
            w = torch.as_tensor(w, dtype=torch.float32, device=device).expand(batch)
            e = self.w_proj(guidance_features(w, self.w_feat_dim))
            out = e if out is None else out + e
        elif w is not None:
            raise ValueError("w given to a network built without guidance=True")
        return out
