"""The workflow's presets (workflow/config/<name>.yaml) read from Python: experiment -> run config.
The demo (the embedded default config, workflow/config/config.yaml) is read as the preset "digits",
the name of its dataset.

The resolution is the one of `run_config` in workflow/rules/common.smk (dataset defaults deep-merged
under the experiment's model / train, the dataset's data section under the experiment's, the shards
path and the fine-tuning init added). tests/test_presets.py checks, for every experiment of every
preset, that it equals the config.json the workflow itself writes, so `bcm bench train --config
<preset>/<experiment>` and the parameter-count tests build exactly the network the workflow trains.
"""

import copy
from pathlib import Path

from bcmcore.config import UserError, load_yaml

PRESET_DIR = Path(__file__).resolve().parents[1] / "workflow" / "config"
PRESETS = ("cifar10", "imagenet64", "ffhq64", "lsun256")
DEMO = "digits"  # the dataset of config.yaml, the workflow's default config (`make demo`)


def _merged(base, override):
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_path(preset):
    """The file of a preset given by name (workflow/config/<name>.yaml; config.yaml for DEMO) or
    path."""
    if preset == DEMO:
        return PRESET_DIR / "config.yaml"
    p = Path(preset)
    return p if p.suffix else PRESET_DIR / f"{preset}.yaml"


def load(preset):
    """A preset by name or path (`preset_path`) -> (its dataset's name, config)."""
    path = preset_path(preset)
    if not path.is_file():
        known = ", ".join((*PRESETS, DEMO))
        raise UserError(f"preset {preset!r}: {path} not found (known: {known})")
    cfg = load_yaml(path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("datasets", {}), dict):
        raise UserError(f"{path}: expected a mapping with a 'datasets' mapping")
    enabled = [ds for ds, d in cfg.get("datasets", {}).items() if d.get("enabled", True)]
    if len(enabled) != 1:
        raise UserError(f"{path}: expected exactly one enabled dataset, got {enabled}")
    return enabled[0], cfg


def experiments(preset, enabled_only=False):
    """The trained experiments of a preset (all of them, or only the enabled ones); experiments that
    import the authors' weights (`import:`, docs/imports.md) have no run config and are left out."""
    ds, cfg = load(preset)
    exps = cfg["datasets"][ds]["experiments"]
    return [
        e
        for e, d in exps.items()
        if (d.get("enabled", True) or not enabled_only) and not d.get("import")
    ]


def run_config(preset, exp):
    """The resolved run config {model, loss, data, train} of one experiment of a preset."""
    ds, cfg = load(preset)
    d = cfg["datasets"][ds]
    if exp not in d["experiments"]:
        raise UserError(
            f"preset {preset!r}: no experiment {exp!r} (known: {', '.join(d['experiments'])})"
        )
    e, defaults = d["experiments"][exp], d.get("defaults", {})
    out = {
        "model": _merged(defaults.get("model", {}), e["model"]),
        "loss": copy.deepcopy(e["loss"]),
        "data": _merged(_merged(d["data"], e.get("data", {})), {"shards": f"results/{ds}/shards"}),
        "train": _merged(defaults.get("train", {}), e.get("train", {})),
    }
    if e.get("init_from"):
        out["train"]["init"] = f"results/{ds}/runs/{e['init_from']}/network-final.pt"
    return out
