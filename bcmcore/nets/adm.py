"""ADM U-Net (Dhariwal & Nichol 2021) for ImageNet-64 with the iCT / BCM changes (docs/methods.md
§12.2-12.3).

iCT / BCM (the defaults): no AdaGN (the embedding is added, not scale-shift), attention only at
attn_res (BCM: 16 and 8, none at 32), cosine-normalised q/k/v, up/down by residual blocks, dropout
only at resolutions <= dropout_max_res, positional embedding of 1000 c_noise = 250 ln t, class
embedding added after the time MLP(s). BCM fine-tuned variant: two_time_embed "project" (untied
u-MLP + bias-free W_align 2*768 -> 768). EDM's DhariwalUNet (EDM and iGCT on ImageNet-64):
adagn, cosine_attention false, positional_scale 1 (features of c_noise itself)."""

import torch
import torch.nn.functional as F
from torch import nn

from bcmcore.nets.embedding import CondEmbedding, TimeEmbedding
from bcmcore.nets.layers import Attention, ResBlock, conv, norm

STYLE = "adm"


class ADM(nn.Module):
    """F(x_in [B, C, H, W], c_t, c_u=None, y=None, w=None) -> [B, C, H, W]."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        mc = cfg.channels
        self.time_embed = TimeEmbedding(
            cfg.embedding_kind,
            mc,
            cfg.emb_mult * mc,
            cfg.time_embed,
            cfg.fourier_scale,
            cfg.positional_scale,
        )
        emb = self.time_embed.out_dim
        self.cond = CondEmbedding(cfg.num_classes, cfg.guidance, emb)

        def block(c_in, c_out, res, **kw):
            p = cfg.dropout if (cfg.dropout_max_res == 0 or res <= cfg.dropout_max_res) else 0.0
            return ResBlock(c_in, c_out, emb, p, STYLE, adagn=cfg.adagn, **kw)

        def attn(ch):
            return Attention(ch, STYLE, cfg.head_channels, cfg.cosine_attention)

        ch = mc * cfg.ch_mult[0]
        self.conv_in = conv(cfg.data_channels, ch, style=STYLE)
        self.down = nn.ModuleList()
        skips, res = [ch], cfg.resolution
        for i, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_blocks):
                layer = nn.ModuleList([block(ch, mc * mult, res)])
                ch = mc * mult
                if res in cfg.attn_res:
                    layer.append(attn(ch))
                self.down.append(layer)
                skips.append(ch)
            if i < len(cfg.ch_mult) - 1:
                self.down.append(nn.ModuleList([block(ch, ch, res, down=True)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([block(ch, ch, res), attn(ch), block(ch, ch, res)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.ch_mult))):
            for j in range(cfg.num_blocks + 1):
                layer = nn.ModuleList([block(ch + skips.pop(), mc * mult, res)])
                ch = mc * mult
                if res in cfg.attn_res:
                    layer.append(attn(ch))
                if i > 0 and j == cfg.num_blocks:
                    layer.append(block(ch, ch, res, up=True))
                    res *= 2
                self.up.append(layer)
        assert not skips
        self.norm_out = norm(ch, STYLE)
        self.conv_out = conv(ch, cfg.data_channels, zero=True)

    def forward(self, x, c_t, c_u=None, y=None, w=None):
        emb = self.time_embed(c_t, c_u)  # positional features of 1000 c_noise inside (embedding.py)
        cond = self.cond(y, w, x.shape[0], x.device)
        emb = emb if cond is None else emb + cond  # class (and iGCT w) after the time MLP(s)
        hs = [self.conv_in(x)]
        for layer in self.down:
            h = layer[0](hs[-1], emb)
            for m in layer[1:]:
                h = m(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], emb)), emb)
        for layer in self.up:
            h = layer[0](torch.cat([h, hs.pop()], dim=1), emb)
            for m in layer[1:]:
                h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        return self.conv_out(F.silu(self.norm_out(h)))
