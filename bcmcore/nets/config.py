"""NetConfig / ModelConfig and the builders (docs/interfaces.md, nets)."""

from dataclasses import dataclass, field
from typing import Literal

from bcmcore import param
from bcmcore.config import ConfigError


@dataclass(frozen=True)
class NetConfig:
    """Raw network F(x_in, c_t, c_u=None, y=None, w=None). Defaults: NCSN++ CIFAR-10 widths
    (docs/methods.md §12)."""

    arch: Literal["mlp", "ncsnpp", "adm"] = "mlp"
    data_channels: int = 3  # image channels C, or the dimension d of toy vectors (mlp)
    resolution: int = 32  # image side; ignored by mlp
    channels: int = 128  # nf (ncsnpp), model_channels (adm), hidden width (mlp)
    ch_mult: tuple[int, ...] = (2, 2, 2)
    num_blocks: int = 4  # residual blocks per resolution (mlp: residual blocks)
    attn_res: tuple[int, ...] = (16,)
    head_channels: int = 64  # adm attention head width
    dropout: float = 0.0
    dropout_max_res: int = 0  # adm: dropout only at resolutions <= this (iCT: 16); 0 = everywhere
    embedding: Literal["fourier", "positional"] | None = (
        None  # None: ncsnpp fourier, adm/mlp positional
    )
    fourier_scale: float = 0.02  # iCT / BCM CIFAR-10 (CM used 16)
    emb_mult: int = 4  # time-embedding width = emb_mult * channels (4nf; ADM 768 = 4 * 192)
    num_classes: int = 0  # 0: unconditional; label -1 = null class (CFG)
    guidance: bool = False  # iGCT denoiser: w-embedding input
    two_time: bool = False  # BCM: F also takes c_u = c_noise(u)
    two_time_embed: Literal["concat", "project"] = (
        "concat"  # from scratch: concat+widen; fine-tune: [I|0] proj.
    )
    # ADM variants (docs/methods.md §12.2): iCT / BCM remove AdaGN and RMS-normalise q/k/v; EDM's
    # DhariwalUNet (EDM and iGCT on ImageNet-64) keeps AdaGN, plain attention, features of c_noise.
    adagn: bool = False  # adm: scale-shift norm, h = GN(h) (1 + scale) + shift
    cosine_attention: bool = True  # adm: q, k, v rescaled to unit RMS per head
    positional_scale: float = 1000.0  # adm: positional features of scale * c_noise (1000: 250 ln t)
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
class ModelConfig:
    """Preconditioned model: kind cm/bcm -> ConsistencyModel, edm -> EDMDenoiser, igct ->
    IGCTModel."""

    kind: Literal["cm", "bcm", "edm", "igct"] = "cm"
    net: NetConfig = field(default_factory=NetConfig)
    sigma_min: float = param.SIGMA_MIN
    sigma_max: float = param.SIGMA_MAX
    sigma_data: float = param.SIGMA_DATA
    # iGCT noiser: "boundary" N = x + (T - t) F (ours, trained and sampled alike); "authors-eval"
    # N = (T - t) F, the iGCT authors' eval rule, which `bcm import` records for their nets.
    noiser_rule: Literal["boundary", "authors-eval"] = "boundary"


def _validate(net, where):
    if net.arch != "mlp":
        levels = len(net.ch_mult)
        if net.resolution % (2 ** (levels - 1)):
            raise ConfigError(
                f"{where}.resolution: {net.resolution} is not divisible by 2^(len(ch_mult)-1)"
            )
    if net.arch == "adm" and net.channels * min(net.ch_mult) % net.head_channels:
        raise ConfigError(
            f"{where}.head_channels: must divide every level's width "
            f"(channels {net.channels} x ch_mult {net.ch_mult})"
        )
    if net.arch != "adm" and (net.adagn or not net.cosine_attention):
        raise ConfigError(f"{where}.adagn / cosine_attention: options of arch adm, not {net.arch}")
    if net.arch != "ncsnpp" and (net.progressive != "none" or net.progressive_input != "residual"):
        raise ConfigError(
            f"{where}.progressive / progressive_input: options of arch ncsnpp, not {net.arch}"
        )
    if not 0 <= net.dropout < 1:
        raise ConfigError(f"{where}.dropout: expected a value in [0, 1), got {net.dropout}")


def build_net(cfg: NetConfig, where="model.net"):
    """The raw network for cfg.arch (imports lazily so one arch's code is not needed by another)."""
    _validate(cfg, where)
    if cfg.arch == "mlp":
        from bcmcore.nets.mlp import MLP

        return MLP(cfg)
    if cfg.arch == "ncsnpp":
        from bcmcore.nets.ncsnpp import NCSNpp

        return NCSNpp(cfg)
    if cfg.arch == "adm":
        from bcmcore.nets.adm import ADM

        return ADM(cfg)
    raise ConfigError(f"{where}.arch: expected mlp, ncsnpp or adm, got {cfg.arch!r}")


def build_model(cfg: ModelConfig):
    """The preconditioned model for cfg.kind (docs/interfaces.md)."""
    from bcmcore.nets.precond import ConsistencyModel, EDMDenoiser

    if cfg.kind in ("cm", "edm", "bcm") and cfg.net.two_time != (cfg.kind == "bcm"):
        raise ConfigError(
            f"model.net.two_time: must be {cfg.kind == 'bcm'} for model.kind {cfg.kind!r}"
        )
    if cfg.noiser_rule != "boundary" and cfg.kind != "igct":
        raise ConfigError(
            f"model.noiser_rule: only iGCT models have a noiser (model.kind {cfg.kind!r})"
        )
    if cfg.kind in ("cm", "bcm"):
        return ConsistencyModel(cfg)
    if cfg.kind == "edm":
        return EDMDenoiser(cfg)
    if cfg.kind == "igct":
        from bcmcore.nets.igct import IGCTModel

        return IGCTModel(cfg)
    raise ConfigError(f"model.kind: expected cm, bcm, edm or igct, got {cfg.kind!r}")
