"""EDM denoising loss with label dropout: the classifier-free-guidance baseline of iGCT (EDM Eq. 2 /
Table 1)."""

from dataclasses import dataclass

import torch

from bcmcore.config import ConfigError
from bcmcore.losses.registry import register


@dataclass(frozen=True)
class EDMConfig:
    P_mean: float = -1.2  # ln sigma ~ N(P_mean, P_std^2) (EDM Table 1)
    P_std: float = 1.2
    label_dropout: float = (
        0.1  # probability of replacing y by the null label -1 (CFG, Ho & Salimans 2022)
    )

    def __post_init__(self):
        if not self.P_std > 0:
            raise ConfigError(f"loss.P_std: expected a positive number, got {self.P_std!r}")
        if not 0 <= self.label_dropout < 1:
            raise ConfigError(
                f"loss.label_dropout: expected a probability in [0, 1), got {self.label_dropout!r}"
            )


def drop_labels(y, p):
    """Replace each label by the null class -1 with probability p (None stays None: unconditional
    model)."""
    if y is None or p == 0:
        return y
    return torch.where(torch.rand(y.shape, device=y.device) < p, torch.full_like(y, -1), y)


@register("edm")
class EDMLoss:
    Config = EDMConfig

    def __init__(self, cfg, model_cfg):
        if model_cfg is not None and model_cfg.kind != "edm":
            raise ConfigError(
                f"loss.kind: 'edm' trains model.kind 'edm', got model.kind {model_cfg.kind!r}"
            )
        if cfg.label_dropout > 0 and model_cfg is not None and model_cfg.net.num_classes < 1:
            raise ConfigError(
                "loss.label_dropout: the model is unconditional (model.net.num_classes = 0); set 0"
            )
        self.cfg = cfg
        self.sigma_data = getattr(model_cfg, "sigma_data", None)

    def __call__(self, model, batch, step, total_steps):
        x, y = batch["x"], drop_labels(batch.get("y"), self.cfg.label_dropout)
        sd = self.sigma_data or model.sigma_data
        sigma = torch.exp(
            self.cfg.P_mean + self.cfg.P_std * torch.randn(x.shape[0], device=x.device)
        )
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2  # lambda(sigma), EDM Table 1
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        D = model(x + s * torch.randn_like(x), sigma, y)
        per_sample = (
            ((D.float() - x) ** 2).flatten(1).sum(1)
        )  # EDM sums over pixels, averages over batch
        loss = weight * per_sample
        return {"loss": loss.mean(), "mse": per_sample.mean().detach()}
