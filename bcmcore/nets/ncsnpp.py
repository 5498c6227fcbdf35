"""NCSN++ (Song et al. 2021) as configured for CIFAR-10 by CM / iCT / BCM (docs/methods.md §12).

BigGAN residual blocks with FIR [1,3,3,1] up/down, skip_rescale, progressive_input = residual
(combine sum), progressive = none, attention at attn_res (after every down-path block, once per
up-path level), Fourier embedding of c_noise(t) = 0.25 ln t. Deep variant: num_blocks 8. BCM from
scratch embeds (t, u) by concatenated Fourier features and doubled dense layers (BCM C.1).
score-SDE's bedroom configuration (LSUN-256): progressive_input = input_skip (the FIR-downsampled
image, 1x1 conv, summed in at each level) and progressive = output_skip (each decoder level adds
conv3x3(act(GN(h))) to the FIR-upsampled output pyramid, which is the output).
Class and guidance-w terms join the Fourier features BEFORE the time MLP, as in EDM's SongUNet and
iGCT's CIFAR-10 net, so that w and t mix inside the MLP (ADM, nets/adm.py, adds them after it).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from bcmcore.nets.embedding import CondEmbedding, TimeEmbedding
from bcmcore.nets.layers import Attention, FIRConvDown, ResBlock, conv, fir_down, fir_up, norm

STYLE = "ncsnpp"


class NCSNpp(nn.Module):
    """F(x_in [B, C, H, W], c_t, c_u=None, y=None, w=None) -> [B, C, H, W]."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        nf, levels = cfg.channels, len(cfg.ch_mult)
        # 2nf Fourier features (W has nf entries) -> Dense(4nf) -> SiLU -> Dense(4nf)
        self.time_embed = TimeEmbedding(
            cfg.embedding_kind, 2 * nf, cfg.emb_mult * nf, cfg.time_embed, cfg.fourier_scale
        )
        emb = self.time_embed.out_dim
        self.cond = CondEmbedding(
            cfg.num_classes, cfg.guidance, self.time_embed.in_dim, label_bias=True
        )

        def block(c_in, c_out=None, **kw):
            return ResBlock(c_in, c_out or c_in, emb, cfg.dropout, STYLE, **kw)

        self.conv_in = conv(cfg.data_channels, nf)
        self.down, self.pyramid = nn.ModuleList(), nn.ModuleList()
        skips, ch, pyr_ch, res = [nf], nf, cfg.data_channels, cfg.resolution
        for i, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_blocks):
                layer = nn.ModuleList([block(ch, nf * mult)])
                ch = nf * mult
                if res in cfg.attn_res:
                    layer.append(Attention(ch, STYLE))
                self.down.append(layer)
                skips.append(ch)
            if i < levels - 1:
                self.down.append(nn.ModuleList([block(ch, down=True)]))
                if cfg.progressive_input == "input_skip":  # Combine: 1x1 conv of the input, summed
                    self.pyramid.append(conv(cfg.data_channels, ch, k=1))
                else:  # residual input pyramid
                    self.pyramid.append(FIRConvDown(pyr_ch, ch))
                    pyr_ch = ch
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([block(ch), Attention(ch, STYLE), block(ch)])
        self.up = nn.ModuleList()
        # output_skip: every level adds conv3x3(act(GN(h))) to the FIR-upsampled output pyramid
        self.skip_out = nn.ModuleList() if cfg.progressive == "output_skip" else None
        for i, mult in reversed(list(enumerate(cfg.ch_mult))):
            layer = nn.ModuleList()
            for _ in range(cfg.num_blocks + 1):
                layer.append(block(ch + skips.pop(), nf * mult))
                ch = nf * mult
            if res in cfg.attn_res:
                layer.append(Attention(ch, STYLE))
            if self.skip_out is not None:
                self.skip_out.append(
                    nn.ModuleList([norm(ch, STYLE), conv(ch, cfg.data_channels, zero=True)])
                )
            if i > 0:
                layer.append(block(ch, up=True))
                res *= 2
            self.up.append(layer)
        assert not skips
        if self.skip_out is None:
            self.norm_out = norm(ch, STYLE)
            self.conv_out = conv(ch, cfg.data_channels, zero=True)
        self._levels, self._blocks = levels, cfg.num_blocks

    def forward(self, x, c_t, c_u=None, y=None, w=None):
        cond = self.cond(y, w, x.shape[0], x.device)
        emb = self.time_embed(c_t, c_u, pre=cond)  # class and w enter before the MLP
        pyramid, hs = x, [self.conv_in(x)]
        h, i_pyr = hs[-1], 0
        for layer in self.down:
            h = layer[0](hs[-1], emb)
            if layer[0].down:
                if self.cfg.progressive_input == "input_skip":  # FIR-downsampled input, 1x1 conv
                    pyramid = fir_down(pyramid)
                    h = self.pyramid[i_pyr](pyramid) + h
                else:  # residual, skip_rescale
                    pyramid = self.pyramid[i_pyr](pyramid)
                    h = pyramid = (pyramid + h) / math.sqrt(2)
                i_pyr += 1
            for attn in layer[1:]:
                h = attn(h)
            hs.append(h)
        h = self.mid[0](hs[-1], emb)
        h = self.mid[2](self.mid[1](h), emb)
        out = None
        for level, layer in enumerate(self.up):
            for m in layer:
                if isinstance(m, Attention):
                    h = m(h)
                elif m.up:
                    out = self._skip_out(level, h, out)
                    h = m(h, emb)
                else:
                    h = m(torch.cat([h, hs.pop()], dim=1), emb)
        if self.skip_out is not None:
            return self._skip_out(len(self.up) - 1, h, out)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _skip_out(self, level, h, out):
        """progressive output_skip: out = up(out) + conv3x3(act(GN(h))) at each level."""
        if self.skip_out is None:
            return None
        n, c = self.skip_out[level]
        h = c(F.silu(n(h)))
        return h if out is None else fir_up(out) + h
