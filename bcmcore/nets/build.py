"""Builders: the raw network of a NetConfig, and the preconditioned model of a ModelConfig."""

import dataclasses

from bcmcore.config import ConfigError
from bcmcore.nets.config import ModelConfig, NetConfig
from bcmcore.nets.igct import IGCTModel, check_igct_classes
from bcmcore.nets.precond import ConsistencyModel, EDMDenoiser


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
    if cfg.kind in ("cm", "edm", "bcm") and cfg.net.two_time != (cfg.kind == "bcm"):
        raise ConfigError(
            f"model.net.two_time: must be {cfg.kind == 'bcm'} for model.kind {cfg.kind!r}"
        )
    if cfg.noiser_rule != "boundary" and cfg.kind != "igct":
        raise ConfigError(
            f"model.noiser_rule: only iGCT models have a noiser (model.kind {cfg.kind!r})"
        )
    if cfg.kind in ("cm", "bcm"):
        return ConsistencyModel(cfg, build_net(cfg.net))
    if cfg.kind == "edm":
        return EDMDenoiser(cfg, build_net(cfg.net))
    if cfg.kind == "igct":  # two nets of one architecture; only the denoiser takes w
        check_igct_classes(cfg)
        noiser = build_net(dataclasses.replace(cfg.net, guidance=False))
        return IGCTModel(cfg, noiser, build_net(dataclasses.replace(cfg.net, guidance=True)))
    raise ConfigError(f"model.kind: expected cm, bcm, edm or igct, got {cfg.kind!r}")
