"""Small residual MLP for 1-D / 2-D toy data, with the same conditioning interface as the image
nets."""

from torch import nn

from bcmcore.nets.embedding import CondEmbedding, TimeEmbedding


class MLPBlock(nn.Module):
    """h + Linear(Dropout(SiLU(Linear(SiLU(h)) + Dense(SiLU(emb))))): an ADM-style resblock without
    convs."""

    def __init__(self, width, emb_dim, dropout):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, emb):
        a = self.fc1(nn.functional.silu(h)) + self.emb(nn.functional.silu(emb))
        return h + self.fc2(self.drop(nn.functional.silu(a)))


class MLP(nn.Module):
    """F(x_in [B, d], c_t, c_u=None, y=None, w=None) -> [B, d]."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        width, emb_dim = cfg.channels, cfg.emb_mult * cfg.channels
        self.time_embed = TimeEmbedding(
            cfg.embedding_kind, width, emb_dim, cfg.time_embed, cfg.fourier_scale
        )
        emb_dim = self.time_embed.out_dim
        self.cond = CondEmbedding(cfg.num_classes, cfg.guidance, emb_dim)
        self.inp = nn.Linear(cfg.data_channels, width)
        self.blocks = nn.ModuleList(
            MLPBlock(width, emb_dim, cfg.dropout) for _ in range(cfg.num_blocks)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, cfg.data_channels))

    def forward(self, x, c_t, c_u=None, y=None, w=None):
        emb = self.time_embed(c_t, c_u)
        cond = self.cond(y, w, x.shape[0], x.device)
        if cond is not None:
            emb = emb + cond  # class / guidance added after the time MLP (ADM convention)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
