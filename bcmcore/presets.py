"""The workflow's presets (workflow/config/<name>.yaml) read from Python: experiment -> run config.
The demo (the embedded default config, workflow/config/config.yaml) is read as the preset "digits",
the name of its dataset.

`resolve` is the one run-config resolution: the workflow's `run_config` (workflow/rules/common.smk)
calls it on its live config, and `run_config` here on a preset file, so `bcm bench train --config
<preset>/<experiment>` and the parameter-count tests build exactly the network the workflow trains
(tests/test_presets.py compares them with the config.json the workflow writes).
"""

import copy
from pathlib import Path

from bcmcore.config import UserError, load_yaml

PRESET_DIR = Path(__file__).resolve().parents[1] / "workflow" / "config"
PRESETS = ("cifar10", "imagenet64", "ffhq64", "lsun256")
DEMO = "digits"  # the dataset of config.yaml, the workflow's default config (`make demo`)


def merged(base, override):
    """Deep merge of two mappings (override wins); neither argument is modified."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
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
    return resolve(ds, d, exp)


def resolve(ds, d, exp):
    """The run config of experiment `exp` of dataset `ds` (its config section `d`): the dataset's
    defaults deep-merged under the experiment's model / train, its data section under the
    experiment's, the shards path and the fine-tuning init (`init_from`) added."""
    e, defaults = d["experiments"][exp], d.get("defaults", {})
    out = {
        "model": merged(defaults.get("model", {}), e["model"]),
        "loss": copy.deepcopy(e["loss"]),
        "data": merged(merged(d["data"], e.get("data", {})), {"shards": f"results/{ds}/shards"}),
        "train": merged(defaults.get("train", {}), e.get("train", {})),
    }
    if e.get("init_from"):
        out["train"]["init"] = f"results/{ds}/runs/{e['init_from']}/network-final.pt"
    if e.get("teacher_from"):  # consistency distillation: the teacher's file and identity digest
        from bcmcore.losses.cd import teacher_digest
        from bcmcore.train.identity import identity_part

        src = e["teacher_from"]
        out["loss"]["teacher"] = f"results/{ds}/runs/{src}/network-final.pt"
        spec = d["experiments"][src].get("import") or identity_part(resolve(ds, d, src))
        out["loss"]["teacher_id"] = teacher_digest(spec)
    return out
