"""Identity keys and runtime keys of a run config: which changes start a training run over.

- Runtime keys (RUNTIME below) say how a run executes, not what it trains: per-process batch,
  loader processes, cadences, kept states, verification, precision and device options. Changing
  one never starts a run over and never reruns a workflow stage: the workflow keeps them out of
  config.json (what Snakemake tracks) and hands them to each launch in runtime.json, which
  `load_run_config` lays over config.json.
- `train.total_steps` is the run's length: raising it continues from the newest state; lowering it
  below the state's step is an error (a shorter run is a new run: move the run directory away).
- Every other key is an identity key, what the run trains (model, loss, data content, seed,
  global batch, lr schedule, EMA, init): a change starts over, the old files kept in
  superseded-<k>/. The data content is `data.digest`, the shards' content digest, which
  `with_data_identity` fills in at start: a re-prepared dataset (another seed, other files)
  starts over like a changed lr.

Configs are compared normalised, every default filled in by the code that reads the state, so a
key added later with a default equal to the old behaviour does not start old runs over.

Schedules that depend on the run's length (the iCT / BCT curriculum N(k), iGCT's stage length) use
`train.schedule_steps`, which a run fixes when it starts (= total_steps unless set): a run continued
with more steps keeps its schedule and trains on at the schedule's final value (N = s1 + 1, the
last stage). The lr never depends on the length (constant, optional linear warm-up from step 0).
"""

from dataclasses import dataclass, replace
from pathlib import Path

from bcmcore.config import ConfigError, from_dict, load_json, to_dict
from bcmcore.train.config import parse_run_config

RUNTIME = {
    "train": (
        "batch_gpu",  # global batch unchanged; noise is drawn per accumulation chunk (see README)
        "status_every",
        "checkpoint_every",
        "snapshot_every",
        "keep_last",
        "bf16",  # autocast precision on CUDA
        "tf32",
        "cudnn_benchmark",
        "deterministic",
        "channels_last",
        "compile",
        "tensorboard",  # the watching keys (train/monitor.py)
        "wandb",
        "wandb_project",
        "snapshot_grid",
        "snapshot_fid",
        "snapshot_fid_features",
        "inception_path",
    ),
    "data": ("num_workers", "prefetch", "in_memory", "pin_memory", "verify_sha256"),
}
LENGTH = "train.total_steps"
DIGEST = "data.digest"
HORIZON = "train.schedule_steps"


def is_runtime(section, key=None):
    """Whether section.key is a runtime key (or is_runtime("train.batch_gpu"))."""
    if key is None:
        section, _, key = section.partition(".")
    return key in RUNTIME.get(section, ())


def runtime_part(d):
    """The runtime keys of a (partial) run-config dict: {section: {key: value}}."""
    out = {}
    for section, keys in RUNTIME.items():
        values = {k: v for k, v in (d.get(section) or {}).items() if k in keys}
        if values:
            out[section] = values
    return out


def identity_part(d):
    """A (partial) run-config dict without its runtime keys (config.json, as the workflow writes
    it)."""
    return {
        section: (
            {k: v for k, v in body.items() if not is_runtime(section, k)}
            if isinstance(body, dict)
            else body
        )
        for section, body in d.items()
    }


def with_runtime(d, runtime, where="runtime.json"):
    """Lay the runtime settings of one launch over config.json; only runtime keys may be set
    there."""
    if not isinstance(runtime, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (train, data)")
    out = {section: dict(body) if isinstance(body, dict) else body for section, body in d.items()}
    for section, body in runtime.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping")
        for key, value in body.items():
            if not is_runtime(section, key):
                known = ", ".join(f"{s}.{k}" for s, ks in RUNTIME.items() for k in ks)
                raise ConfigError(
                    f"{where}: '{section}.{key}' is not a runtime key (set it in config.json; "
                    f"runtime keys: {known})"
                )
            out.setdefault(section, {})[key] = value
    return out


def normalized(d, where="config"):
    """Plain dict of a run config with every default filled in (the loss section too)."""
    from bcmcore.losses import get_loss_class

    cfg = parse_run_config(d, where=where)
    options = {k: v for k, v in cfg.loss.items() if k != "kind"}
    loss_cls = get_loss_class(cfg.loss.get("kind"))
    out = cfg.as_dict()
    out["loss"] = {"kind": cfg.loss["kind"], **to_dict(from_dict(loss_cls.Config, options, "loss"))}
    return out


def _flat(d, prefix=""):
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class Decision:
    """What a training state means for the config in use."""

    restart: bool  # an identity key changed: start over
    changed: tuple  # "key old -> new": identity keys when restarting, else runtime keys / length
    cfg: object = None  # when resuming: the config to run, schedule length pinned to the state's


def compare(state_config, cfg, step, where="config.json"):
    """Decision for resuming the state (its stored config and step) with RunConfig `cfg`."""
    try:
        old = _flat(normalized(state_config, where="the training state's config"))
    except ConfigError as e:
        return Decision(True, (f"(the state's config no longer reads: {e})",))
    new = _flat(normalized(cfg.as_dict(), where=where))
    if old.get(DIGEST) is None:  # a state from before data identity: its data is unknown, kept
        old[DIGEST] = new.get(DIGEST)
    horizon = old[HORIZON] or old[LENGTH]  # the schedule length the state was trained with
    old[HORIZON] = horizon
    if new[HORIZON] is None:  # unset: the run keeps the length it started with
        new[HORIZON] = horizon
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    changes = tuple(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
    if any(k != LENGTH and not is_runtime(k) for k in diff):
        return Decision(True, tuple(c for k, c in zip(diff, changes) if not is_runtime(k)))
    if cfg.train.total_steps < step:
        raise ConfigError(
            f"{where}: train.total_steps {cfg.train.total_steps} is below the step of the run's "
            f"newest training state ({step}); raise it, or move the run directory away to train "
            f"a shorter run from scratch"
        )
    pinned = replace(cfg, train=replace(cfg.train, schedule_steps=horizon))
    return Decision(False, changes, pinned)


def with_data_identity(cfg, where="config.json"):
    """cfg with data.digest = the content digest of its shards (checked when the config sets it)."""
    from bcmcore.shards import data_digest, read_manifest

    read_manifest(cfg.data.shards)  # a missing or foreign manifest: its own message
    actual = data_digest(cfg.data.shards)
    if cfg.data.digest not in (None, actual):
        raise ConfigError(
            f"{where}: data.digest {cfg.data.digest} but {cfg.data.shards} holds data {actual} "
            f"(the dataset was re-prepared: remove data.digest to train on it)"
        )
    return replace(cfg, data=replace(cfg.data, digest=actual))


def start(cfg):
    """A fresh run fixes its schedule length (= total_steps unless set)."""
    t = cfg.train
    return replace(cfg, train=replace(t, schedule_steps=t.schedule_steps or t.total_steps))


def load_run_config(run_dir):
    """RUN_DIR/config.json, with the runtime keys of RUN_DIR/runtime.json (if any) laid over it."""
    path, runtime = Path(run_dir) / "config.json", Path(run_dir) / "runtime.json"
    d = load_json(path)
    if runtime.is_file():
        d = with_runtime(d, load_json(runtime), where=str(runtime))
    return parse_run_config(d, where=str(path))
