"""NetConfig / ModelConfig: what a network and a preconditioned model are (docs/interfaces.md,
nets); the builders are in nets/build.py."""

from dataclasses import dataclass, field
from typing import Annotated, Literal

from bcmcore import param
from bcmcore.config import Count, Pos, Positive, Probability, checked, fail


@dataclass(frozen=True)
@checked
class NetConfig:
    """Raw network F(x_in, c_t, c_u=None, y=None, w=None). Defaults: NCSN++ CIFAR-10 widths
    (docs/methods.md §12)."""

    arch: Literal["mlp", "ncsnpp", "adm"] = "mlp"
    data_channels: Pos = 3  # image channels C, or the dimension d of toy vectors (mlp)
    resolution: Pos = 32  # image side; ignored by mlp
    channels: Pos = 128  # nf (ncsnpp), model_channels (adm), hidden width (mlp)
    ch_mult: tuple[Pos, ...] = (2, 2, 2)
    num_blocks: Pos = 4  # residual blocks per resolution (mlp: residual blocks)
    attn_res: tuple[Pos, ...] = (16,)
    head_channels: Pos = 64  # adm attention head width
    dropout: Annotated[float, Probability] = 0.0
    dropout_max_res: Count = 0  # adm: dropout only at resolutions <= this (iCT: 16); 0 = everywhere
    embedding: Literal["fourier", "positional"] | None = (
        None  # None: ncsnpp fourier, adm/mlp positional
    )
    fourier_scale: Annotated[float, Positive] = 0.02  # iCT / BCM CIFAR-10 (CM used 16)
    emb_mult: Pos = 4  # time-embedding width = emb_mult * channels (4nf; ADM 768 = 4 * 192)
    num_classes: Count = 0  # 0: unconditional; label -1 = null class (CFG)
    guidance: bool = False  # iGCT denoiser: w-embedding input
    two_time: bool = False  # BCM: F also takes c_u = c_noise(u)
    two_time_embed: Literal["concat", "project"] = (
        "concat"  # from scratch: concat+widen; fine-tune: [I|0] proj.
    )
    # ADM variants (docs/methods.md §12.2): iCT / BCM remove AdaGN and RMS-normalise q/k/v; EDM's
    # DhariwalUNet (EDM and iGCT on ImageNet-64) keeps AdaGN, plain attention, features of c_noise.
    adagn: bool = False  # adm: scale-shift norm, h = GN(h) (1 + scale) + shift
    cosine_attention: bool = True  # adm: q, k, v rescaled to unit RMS per head
    positional_scale: Annotated[float, Positive] = (
        1000.0  # adm: positional features of scale * c_noise (1000: 250 ln t)
    )
    # NCSN++ pyramids (score-SDE names; docs/methods.md §12.1): CIFAR-10 residual / none, LSUN
    # bedroom input_skip / output_skip.
    progressive_input: Literal["residual", "input_skip"] = "residual"
    progressive: Literal["none", "output_skip"] = "none"

    @property
    def time_embed(self):
        """'single' | 'concat' | 'project': the mode of nets.embedding.TimeEmbedding."""
        return self.two_time_embed if self.two_time else "single"

    @property
    def embedding_kind(self):
        return self.embedding or ("fourier" if self.arch == "ncsnpp" else "positional")


@dataclass(frozen=True)
@checked
class ModelConfig:
    """Preconditioned model: kind cm/bcm -> ConsistencyModel, edm -> EDMDenoiser, igct ->
    IGCTModel."""

    kind: Literal["cm", "bcm", "edm", "igct"] = "cm"
    net: NetConfig = field(default_factory=NetConfig)
    sigma_min: Annotated[float, Positive] = param.SIGMA_MIN
    sigma_max: Annotated[float, Positive] = param.SIGMA_MAX
    sigma_data: Annotated[float, Positive] = param.SIGMA_DATA
    # iGCT noiser: "boundary" N = x + (T - t) F (ours, trained and sampled alike); "authors-eval"
    # N = (T - t) F, the iGCT authors' eval rule, which `bcm import` records for their nets.
    noiser_rule: Literal["boundary", "authors-eval"] = "boundary"

    def __post_init__(self):
        if (
            not self.sigma_min < self.sigma_max
        ):  # the noise range [sigma_min, sigma_max] (EDM Eq. 5)
            fail(
                "sigma_min",
                f"expected less than sigma_max ({self.sigma_max}), got {self.sigma_min}",
            )
