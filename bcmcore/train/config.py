"""TrainConfig (the run config's `train` section) and the resolved run config {model, loss, data,
train}."""

import hashlib
from dataclasses import dataclass
from typing import Annotated

from bcmcore.config import (
    ConfigError,
    Count,
    NonNegative,
    Pos,
    PosFloat,
    Prob,
    checked,
    from_dict,
    to_dict,
)


@dataclass(frozen=True)
@checked
class TrainConfig:
    """One training stage. Progress is counted in optimizer steps; schedules are functions of the
    step."""

    total_steps: Pos = 1000  # optimizer steps of the whole stage; raising it continues the run
    # length of the step schedules (iCT/BCT curriculum, iGCT stages); None: total_steps at the start
    # of the run, kept when the run is continued with more steps (bcmcore/train/identity.py)
    schedule_steps: Pos | None = None
    batch: Pos = 128  # global batch per step (all processes, all accumulation rounds)
    batch_gpu: Pos | None = None  # per-process batch per accumulation round; None = batch / world
    lr: PosFloat = 1e-4  # RAdam learning rate (iCT / BCM)
    betas: tuple[Prob, Prob] = (0.9, 0.999)
    eps: PosFloat = 1e-8
    weight_decay: Annotated[float, NonNegative] = 0.0
    warmup_steps: Count = 0  # linear lr warm-up; 0 = constant lr (iCT / BCM released code)
    ema_rate: Prob = 0.99993  # evaluation EMA per step (iCT CIFAR-10); never the teacher
    grad_clip: PosFloat | None = None  # max global gradient norm; None = no clipping
    bf16: bool = False  # bf16 autocast, CUDA only (ignored on CPU)
    seed: int = 0  # init, data order and every noise draw derive from it
    init: str | None = None  # network file to start from (BCM fine-tuning: iCT network-final.pt)
    status_every: Pos = 100  # steps between status lines / stats.jsonl rows
    checkpoint_every: Pos = 1000  # steps between training-state files
    snapshot_every: Count = 0  # steps between network-snapshot files; 0 = none
    keep_last: Pos = 2  # training-state files kept (older ones are deleted)
    # Watching keys (runtime keys, bcmcore/train/monitor.py): what is logged, never what is trained.
    tensorboard: bool = True  # TensorBoard event files in the run directory
    wandb: str = ""  # "" (off), "online" or "offline" (RUN_DIR/wandb/, `wandb sync` later)
    wandb_project: str = "bcm-pipeline"
    snapshot_grid: Count = 64  # fixed-seed EMA samples in each snapshot's grid PNG; 0 = none
    snapshot_fid: Count = 0  # EMA samples for a quick FID of each snapshot; 0 = none
    snapshot_fid_features: str = "demo"  # demo | clean | legacy_tensorflow (Inception modes)
    inception_path: str = ""  # the staged inception-2015-12-05.pt, for Inception features
    # Device keys (runtime keys, bcmcore/train/device.py): how the run executes, not what it trains.
    tf32: bool = True  # TF32 fp32 matmuls/convolutions on CUDA (both reference repos train so)
    cudnn_benchmark: bool = True  # cuDNN autotuner (off under deterministic)
    deterministic: bool = False  # deterministic CUDA kernels: bitwise resume on a GPU (slower)
    channels_last: bool = False  # NHWC weights and batches (convolutional nets; pays on CUDA)
    compile: bool = False  # torch.compile the networks (the first steps compile)

    def __post_init__(self):  # numbers: the Bound annotations (@checked); the choices here
        if self.wandb not in ("", "online", "offline"):
            raise ConfigError(
                f"train.wandb: expected '' (off), 'online' or 'offline', got {self.wandb!r}"
            )
        if self.snapshot_fid_features not in ("demo", "clean", "legacy_tensorflow"):
            raise ConfigError(
                "train.snapshot_fid_features: expected demo, clean or legacy_tensorflow, got "
                f"{self.snapshot_fid_features!r}"
            )

    def lr_at(self, step):
        """Constant lr with optional linear warm-up; a pure function of the step, so resume needs no
        state."""
        if self.warmup_steps:
            return self.lr * min(1.0, (step + 1) / self.warmup_steps)
        return self.lr

    def split_batch(self, world_size):
        """(batch_gpu, rounds): rounds = batch / (batch_gpu * world) accumulation rounds per
        step."""
        if self.batch % world_size:
            raise ConfigError(
                f"train.batch: {self.batch} is not divisible by the number of processes "
                f"({world_size})"
            )
        per_rank = self.batch // world_size
        batch_gpu = min(self.batch_gpu or per_rank, per_rank)
        if per_rank % batch_gpu:
            raise ConfigError(
                f"train.batch_gpu: batch {self.batch} must be divisible by batch_gpu x processes "
                f"({batch_gpu} x {world_size})"
            )
        return batch_gpu, per_rank // batch_gpu


def round_seed(seed, step, chunk):
    """Seed of one (step, global chunk) pair: chunk = round * world + rank, so a chunk's noise does
    not depend on how chunks are spread over processes and accumulation rounds."""
    digest = hashlib.sha256(f"bcm/{seed}/{step}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class RunConfig:
    """The resolved run config (docs/interfaces.md): parsed sections plus the plain dict they came
    from."""

    model: object  # nets.ModelConfig
    loss: dict  # {"kind", ...}: parsed by losses.build_loss
    data: object  # data.DataConfig
    train: TrainConfig

    def as_dict(self):
        """Normalised plain dict (defaults filled in): stored in every checkpoint and network
        file."""
        return {
            "model": to_dict(self.model),
            "loss": dict(self.loss),
            "data": to_dict(self.data),
            "train": to_dict(self.train),
        }


def parse_run_config(d, where="config.json"):
    from bcmcore.data import DataConfig
    from bcmcore.nets import ModelConfig

    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping with keys model, loss, data, train")
    unknown = sorted(set(d) - {"model", "loss", "data", "train"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown section '{unknown[0]}' (known: data, loss, model, train)"
        )
    for key in ("model", "loss", "data"):
        if key not in d:
            raise ConfigError(f"{where}: missing section '{key}'")
    if not isinstance(d["loss"], dict):
        raise ConfigError(f"{where}: loss: expected a mapping with a 'kind' key, got {d['loss']!r}")
    return RunConfig(
        model=from_dict(ModelConfig, d["model"], "model"),
        loss=dict(d["loss"]),
        data=from_dict(DataConfig, d["data"], "data"),
        train=from_dict(TrainConfig, d.get("train", {}), "train"),
    )


def check_data_fits(cfg: RunConfig):
    """The model's data shape and classes against the shards' manifest, before any weight exists."""
    from bcmcore.shards import read_manifest

    man, net = read_manifest(cfg.data.shards), cfg.model.net
    where = f"{cfg.data.shards}/manifest.json"
    kind = man.get("kind")
    if net.arch == "mlp":
        if kind != "vector" or man.get("dim") != net.data_channels:
            got = f"{kind} data" + (
                f" of dim {man.get('dim')}"
                if kind == "vector"
                else f" ({man.get('channels')} x {man.get('resolution')}^2)"
            )
            raise ConfigError(
                f"model.net: arch mlp with data_channels {net.data_channels} expects vectors of "
                f"dim {net.data_channels}, but {where} holds {got}"
            )
    else:
        fits = (man.get("channels"), man.get("resolution")) == (net.data_channels, net.resolution)
        if kind != "image" or not fits:
            got = (
                f"{man.get('channels')}-channel {man.get('resolution')}x{man.get('resolution')} "
                f"images"
                if kind == "image"
                else f"{kind} data of dim {man.get('dim')}"
            )
            raise ConfigError(
                f"model.net: arch {net.arch} expects {net.data_channels}-channel "
                f"{net.resolution}x{net.resolution} images (data_channels, resolution), but "
                f"{where} holds {got}"
            )
    classes = man.get("num_classes") or 0
    if net.num_classes and classes > net.num_classes:
        raise ConfigError(
            f"model.net.num_classes: {net.num_classes}, but {where} has {classes} classes"
        )
