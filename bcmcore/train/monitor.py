"""Watching a training run (rank 0 only): timestamped status lines with elapsed time and ETA,
TensorBoard event files (on by default), optional Weights & Biases, a fixed-seed EMA sample grid
and an optional quick FID at every `snapshot_every` (README "Follow a running job").

Everything here observes the run and never changes it: the grid and the FID draw their noise from
their own per-seed generators (sampling.SeededRNG), so the training RNG stream, and with it bitwise
resume, is untouched. The keys (train.tensorboard, wandb, snapshot_grid, snapshot_fid, ...) are
runtime keys (train/identity.py): changing them never starts a run over.
"""

import datetime
import re
import time
from pathlib import Path

import numpy as np
import torch

from bcmcore.config import ConfigError, UserError

GRID_SEED = 0  # the grid's samples use seeds GRID_SEED .. + snapshot_grid - 1 at every snapshot
FID_SEED = 1_000_000  # the quick FID's seeds, apart from the grid's
FID_SPLIT = "train"  # reference split of the quick FID (the eval sweep's default ref_split)
SCALARS = {  # stats.jsonl column -> TensorBoard / W&B tag (losses go under loss/)
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "kimg_per_s": "perf/kimg_per_s",
    "sec_per_kimg": "perf/sec_per_kimg",
    "mem_gb": "perf/peak_mem_gb",
    "kimg": "progress/kimg",
}


def status_step(line):
    """The step of a status line this module prints ("[<time>] step 3/12 ..."), else None: for
    whatever watches a training process's output (the GPU check's SIGKILL item, the tests)."""
    m = re.match(r"^\[[^\]]*\] step (\d+)/", line)
    return int(m.group(1)) if m else None


def hms(seconds):
    """Seconds -> H:MM:SS (days as 1d 02:03:04)."""
    s = int(round(max(seconds, 0)))
    d, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{d}d {text}" if d else text


def snapshot_recipe(model):
    """The grid's and the quick FID's sampler: one network evaluation for the consistency models
    (CM Alg. 1, BCM Alg. 1, iGCT 1-step generation), EDM's 18-step Heun (EDM Alg. 1) otherwise."""
    from bcmcore.recipes import EPS, Recipe, T, get_recipe

    kind = getattr(model, "kind", None) or model.cfg.kind
    if kind == "edm":
        return get_recipe("edm-18").for_model(model)
    if kind == "igct":
        return Recipe("igct", steps=1).for_model(model)
    return Recipe("onestep", (T, EPS)).for_model(model)


@torch.no_grad()
def generate_uint8(model, seeds, device, batch=256):
    """Samples of per-sample seeds (the same images whatever the batch) -> uint8 [N, C, H, W];
    conditional models get labels drawn per seed, as `bcm sample --seeds` draws them."""
    from bcmcore import sampling
    from bcmcore.images import to_uint8
    from bcmcore.nets.facts import data_shape, num_classes

    recipe, out = snapshot_recipe(model), []
    for i in range(0, len(seeds), batch):
        s = np.asarray(seeds[i : i + batch])
        rng = sampling.SeededRNG(s, device)
        y = sampling.seeded_labels(s, num_classes(model), device) if num_classes(model) else None
        x, _ = sampling.generate(model, recipe, rng.randn(data_shape(model)), rng, y)
        out.append(to_uint8(x.clamp(-1, 1)).numpy())
    return np.concatenate(out)


class QuickFID:
    """FID of `samples` fixed-seed EMA samples against the dataset's train split, through the
    sweep's feature extractors (metrics/features.py) and clean-fid's Fréchet distance. The
    reference statistics come from the sweep's cache file when it exists (same extractor, same
    shards), else they are computed once per run, in memory, on this rank only (no collective:
    the other ranks are training)."""

    def __init__(self, shard_dir, samples, features, inception_path, device):
        self.shard_dir, self.samples, self.device = shard_dir, samples, device
        self.features, self.inception_path = features, inception_path
        self.extractor = self.ref = None

    def _prepare(self):
        from bcmcore.metrics import fid as fidlib
        from bcmcore.metrics.features import demo_extractor, inception_extractor

        if self.features == "demo":
            # rank 0 alone, mid-training: no barrier (the other ranks are in a step's all-reduce)
            self.extractor = demo_extractor(self.shard_dir, self.device, collective=False)
        else:
            if not self.inception_path:
                raise ConfigError(
                    f"train.inception_path: required for train.snapshot_fid_features "
                    f"{self.features!r} (the staged inception-2015-12-05.pt)"
                )
            self.extractor = inception_extractor(self.inception_path, self.features, self.device)
        fidlib.check_count(self.samples, self.extractor.dim, "train.snapshot_fid")
        path = fidlib.reference_path(self.shard_dir, FID_SPLIT, self.extractor.key)
        meta = {
            "format": fidlib.REF_FORMAT,
            "split": FID_SPLIT,
            "extractor": self.extractor.key,
            "manifest": fidlib._manifest_digest(self.shard_dir),
            "moments": True,
        }
        cached = fidlib.load_reference(path, meta)
        if cached is not None:
            self.ref = cached["mu"], cached["sigma"]
            return
        from bcmcore.data import iter_split

        moments = fidlib.Moments()
        for x, _ in iter_split(self.shard_dir, FID_SPLIT, 10_000):
            moments.add(self.extractor.features(x, progress=False))
        self.ref = moments.stats(f"{self.shard_dir} split '{FID_SPLIT}'")

    def __call__(self, model):
        from bcmcore.metrics import fid as fidlib

        if self.extractor is None:
            self._prepare()
        seeds = np.arange(FID_SEED, FID_SEED + self.samples)
        feats = self.extractor.features(generate_uint8(model, seeds, self.device), progress=False)
        mu, sigma = fidlib.feature_stats(feats, "snapshot samples")
        return fidlib.frechet_distance(mu, sigma, *self.ref), self.extractor.key


def open_wandb(mode, project, run_dir, config, step):
    """A W&B run (mode online or offline: offline writes RUN_DIR/wandb/ for `wandb sync` later),
    resumed by a run id stored in the run directory so a restarted job continues the same curve."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            f"train.wandb: {mode!r} needs the wandb package, which is not installed "
            "(pip install 'bcm-pipeline[wandb]', or set train.wandb to '' to log to TensorBoard "
            "only)"
        ) from None
    id_file = Path(run_dir) / "wandb-id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=project,
        name=Path(run_dir).name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=config,
    )


class Monitor:
    """What a researcher watches while a stage trains. Create on every rank (only rank 0 writes),
    call `status(row)` per status row, `snapshot(step, ema_model)` per snapshot, `close()` at
    the end."""

    def __init__(self, run_dir, cfg, main, step, device, log):
        t = cfg.train
        self.run_dir, self.main, self.t, self.device, self.log = Path(run_dir), main, t, device, log
        self.total, self.step0, self.t0 = t.total_steps, step, time.time()
        self.tb = self.wandb = None
        self.vector = cfg.model.net.arch == "mlp"
        self.fid = None
        if t.snapshot_fid and not self.vector:
            self.fid = QuickFID(
                cfg.data.shards, t.snapshot_fid, t.snapshot_fid_features, t.inception_path, device
            )
        if not main:
            return
        if t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events after the resumed state (written before a kill) are dropped
            self.tb = SummaryWriter(str(self.run_dir), purge_step=step or None)
        if t.wandb:
            self.wandb = open_wandb(t.wandb, t.wandb_project, self.run_dir, cfg.as_dict(), step)

    def status(self, row):
        """Log one stats row to TensorBoard / W&B; -> the status line (timestamp, elapsed, ETA)."""
        step = row["step"]
        row = {**row, "kimg_per_s": 1.0 / row["sec_per_kimg"] if row["sec_per_kimg"] else 0.0}
        losses = loss_terms(row)
        self._scalars(step, {**{f"loss/{k}": v for k, v in losses.items()}, **self._tags(row)})
        elapsed = time.time() - self.t0
        done = step - self.step0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
        text = "  ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items()))
        grad = f"  grad {row['grad_norm']:.3g}" if "grad_norm" in row else ""
        return (
            f"[{now}] step {step}/{self.total} ({100 * step / self.total:.1f}%)  "
            f"kimg {row['kimg']:.1f}  {text}{grad}  sec/kimg {row['sec_per_kimg']:.3g}  "
            f"mem {row['mem_gb']:.2f} GB  elapsed {hms(elapsed)}  "
            f"eta {hms(eta) if eta == eta else '?'}"
        )

    def _tags(self, row):
        return {tag: row[k] for k, tag in SCALARS.items() if k in row}

    def _scalars(self, step, values):
        if self.tb is not None:
            for tag, v in values.items():
                self.tb.add_scalar(tag, v, step)
            self.tb.flush()  # a watcher sees each row as it is written
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def snapshot(self, step, ema_model):
        """The fixed-seed EMA grid (RUN_DIR/grid-<step>.png and TensorBoard image `samples`) and,
        when train.snapshot_fid is set, the quick FID (-> a stats row {step, snapshot_fid})."""
        if not self.main or self.vector or not (self.t.snapshot_grid or self.fid):
            return None
        was_training = ema_model.training
        ema_model.eval()
        try:
            row = {"step": step}
            if self.t.snapshot_grid:
                path = self.run_dir / f"grid-{step:07d}.png"
                images = generate_uint8(ema_model, np.arange(self.t.snapshot_grid), self.device)
                self._grid(step, path, images)
            if self.fid is not None:
                started = time.time()
                row["snapshot_fid"], row["fid_features"] = self.fid(ema_model)
                row["fid_samples"] = self.t.snapshot_fid
                self._scalars(step, {"eval/snapshot_fid": row["snapshot_fid"]})
                self.log(
                    f"[snapshot {step}] FID {row['snapshot_fid']:.3f} ({self.t.snapshot_fid} EMA "
                    f"samples, {row['fid_features']} features, {time.time() - started:.1f} s)"
                )
            return row
        finally:
            ema_model.train(was_training)

    def _grid(self, step, path, images):
        from bcmcore.images import save_grid

        save_grid(path, images)
        if self.tb is not None or self.wandb is not None:
            from PIL import Image

            with Image.open(path) as im:
                grid = np.asarray(im.convert("RGB"))
            if self.tb is not None:
                self.tb.add_image("samples", grid, step, dataformats="HWC")
                self.tb.flush()
            if self.wandb is not None:
                import wandb

                self.wandb.log({"samples": wandb.Image(grid)}, step=step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_stats(path):
    """The rows of a run's stats.jsonl: status rows (step, loss terms, lr, speed) and snapshot
    rows (step, snapshot_fid, fid_features, fid_samples)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: not found (the stats.jsonl `bcm train` writes in its run directory)"
        )
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not a JSON stats row ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise UserError(f"{path}:{i}: a stats row needs an integer 'step', got {line[:80]!r}")
        rows.append(row)
    return rows


def loss_terms(row):
    """The loss columns of a stats.jsonl status row: `loss` and the logged terms of the objective
    (everything but the SCALARS, step, time and FID columns)."""
    return {k: v for k, v in row.items() if k not in SCALARS and _is_loss(k)}


def _is_loss(key):
    return key not in ("step", "time_s") and not key.startswith(("fid", "snapshot_fid"))
