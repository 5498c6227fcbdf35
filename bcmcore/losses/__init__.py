"""Training objectives, one file per method; `build_loss` maps the config's `loss.kind` to a class.

A loss class has a frozen `Config` dataclass (the `loss` section minus `kind`), is constructed as
`cls(cfg, model_cfg)` (model_cfg: `nets.ModelConfig`, read for kind / sigma_min / sigma_max /
sigma_data) and is called as `loss(model, batch, step, total_steps) -> {"loss": scalar to backprop,
<term>: detached scalars}`.
Kinds: ict, bct (here), igct, edm, cd, bcd (imported on first use: they pull in the guided
networks, the teacher and LPIPS).
"""

import importlib

from bcmcore.config import ConfigError, from_dict
from bcmcore.losses.registry import LOSSES, register  # noqa: F401 (the registry's API)

_LAZY = {
    "igct": "bcmcore.losses.igct",
    "edm": "bcmcore.losses.edm",
    "cd": "bcmcore.losses.cd",
    "bcd": "bcmcore.losses.cd",
}


def known_kinds():
    return sorted(set(LOSSES) | set(_LAZY))


def get_loss_class(kind):
    """The class registered for `kind`; unknown kinds -> ConfigError naming `loss.kind` and the
    known kinds."""
    if kind not in LOSSES and kind in _LAZY:
        importlib.import_module(_LAZY[kind])  # registers itself via @register
    if kind not in LOSSES:
        raise ConfigError(f"loss.kind: unknown loss {kind!r} (known: {', '.join(known_kinds())})")
    return LOSSES[kind]


def build_loss(loss_dict, model_cfg):
    """Loss object from the run config's `loss` section ({"kind": ..., **options}) and the model
    config."""
    if not isinstance(loss_dict, dict):
        raise ConfigError(f"loss: expected a mapping with a 'kind' key, got {loss_dict!r}")
    if "kind" not in loss_dict:
        raise ConfigError(f"missing config key 'loss.kind' (known: {', '.join(known_kinds())})")
    options = {k: v for k, v in loss_dict.items() if k != "kind"}
    cls = get_loss_class(loss_dict["kind"])
    return cls(from_dict(cls.Config, options, where="loss"), model_cfg)


from bcmcore.losses import bct, ict  # noqa: E402,F401  (register the built-in kinds)
