"""WebDataset shards -> training batches: seeded global shuffle, split by rank and worker, exact
resume; and whole splits read back for evaluation. The on-disk format is bcmcore.shards.

Random access instead of a shuffle buffer: the global stream position p (samples consumed by all
ranks) maps to sample perm_e[p mod N] of a seeded permutation per epoch e = p // N, so the shuffle
is an exact uniform permutation, ranks and workers just take disjoint positions, resume is
arithmetic (nothing is read or decoded to skip), and iGCT's uniform source item (docs/methods.md
§7.1) is one more random read.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bcmcore.config import ConfigError, UserError
from bcmcore.images import to_float
from bcmcore.shards import ShardReader, read_manifest

IN_MEMORY_AUTO_BYTES = 64 << 20  # auto in-memory below this decoded split size (digits, toy data)
_SALT_PERM, _SALT_FLIP, _SALT_SRC, _SALT_SRC_FLIP = 0x5EED, 1, 2, 3


@dataclass(frozen=True)
class DataConfig:
    shards: str = "results/digits/shards"  # directory holding manifest.json
    split: str = "train"
    xflip: bool = False  # random horizontal flip (seeded per stream position)
    shuffle: bool = True  # seeded permutation per epoch (replaces a shuffle buffer)
    paired: bool = False  # add "x_src": a uniform random item of the same split (iGCT)
    num_workers: int = 2  # DataLoader processes decoding PNGs
    prefetch: int = 4  # batches prefetched per worker
    in_memory: bool | None = None  # decode the whole split once; None: auto for small splits
    verify_sha256: bool = False  # hash every shard against the manifest before reading
    pin_memory: bool = True  # only when make_loader is given a CUDA device
    # Content digest of the shards (bcmcore.shards.data_digest), part of the recipe: re-prepared
    # data starts training over. `bcm train` fills it in from the manifest; if set, it must match.
    digest: str | None = None


def iter_split(shard_dir, split, chunk=50_000, num_workers=None):
    """The split in key order as chunks (x uint8 [n, C, H, W] or float32 [n, d], y long [n]) of
    `chunk` items: memory stays bounded on ImageNet-size splits. Decoded by `num_workers` DataLoader
    processes (default: up to 8 CPU cores when the split is large)."""
    from tqdm import tqdm

    reader = ShardReader(shard_dir, split)
    if reader.n == 0:
        raise UserError(f"{Path(shard_dir) / 'manifest.json'}: split '{split}' is empty")
    step = max(1, min(2048, chunk))  # items per loader block; a chunk is whole blocks
    if num_workers is None:
        num_workers = 0 if reader.n <= 4 * 2048 else min(8, os.cpu_count() or 1)
    per = max(1, chunk // step)
    ranges = [list(range(a, min(a + step, reader.n))) for a in range(0, reader.n, step)]
    for c in range(0, len(ranges), per):
        loader = torch.utils.data.DataLoader(
            _BatchDataset(_ShardSource(reader), Stream(reader.n, 0, shuffle=False)),
            batch_size=None,
            sampler=ranges[c : c + per],
            num_workers=num_workers,
        )
        parts = list(
            _checked(
                tqdm(
                    loader,
                    total=len(ranges[c : c + per]),
                    desc=f"load {split}",
                    unit="block",
                    disable=len(ranges) <= 4,
                    leave=False,
                )
            )
        )
        yield torch.cat([p["x"] for p in parts]), torch.cat([p["y"] for p in parts])


def load_split(shard_dir, split, num_workers=None, limit=None):
    """The whole split (or its first `limit` items) in memory: (x uint8 [N, C, H, W] or float32 [N,
    d], y long [N]), in key order."""
    parts, n = [], 0
    for x, y in iter_split(
        shard_dir, split, 2**62 if limit is None else max(1, limit), num_workers
    ):
        parts.append((x, y))
        n += len(x)
        if limit is not None and n >= limit:
            break
    return torch.cat([x for x, _ in parts])[:limit], torch.cat([y for _, y in parts])[:limit]


def load_labels(shard_dir, split):
    """The split's class labels, long [N] in key order, read without decoding a single image."""
    reader = ShardReader(shard_dir, split)
    return torch.tensor([int(reader.members(i)["cls"]) for i in range(reader.n)], dtype=torch.long)


# --------------------------------------------------------------------------------------- the stream


def _hash(seed, pos, salt):
    """splitmix64 of (seed, position, salt): counter-based randomness, independent of batching and
    workers."""
    with np.errstate(over="ignore"):
        z = (
            np.uint64(seed & (2**64 - 1)) * np.uint64(0x9E3779B97F4A7C15)
            + np.asarray(pos, np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
            + np.uint64(salt)
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class Stream:
    """Global stream position p -> sample index, flip bit and paired source index (all seeded)."""

    def __init__(self, n, seed, shuffle=True, xflip=False, paired=False):
        self.n, self.seed, self.shuffle, self.xflip, self.paired = n, seed, shuffle, xflip, paired
        self._perm = (None, None)

    def perm(self, epoch):
        if self._perm[0] != epoch:
            p = (
                np.random.default_rng([self.seed & (2**64 - 1), epoch, _SALT_PERM]).permutation(
                    self.n
                )
                if self.shuffle
                else np.arange(self.n)
            )
            self._perm = (epoch, p)
        return self._perm[1]

    def index(self, pos):
        pos = np.asarray(pos, np.int64)
        out = np.empty_like(pos)
        for e in np.unique(pos // self.n):  # a batch may straddle an epoch boundary
            m = pos // self.n == e
            out[m] = self.perm(int(e))[pos[m] % self.n]
        return out

    def flips(self, pos, salt=_SALT_FLIP):
        if not self.xflip:
            return np.zeros(len(pos), bool)
        return (_hash(self.seed, pos, salt) & np.uint64(1)).astype(bool)

    def source(self, pos):
        # iGCT paired sampler (docs/methods.md §7.1): j uniform over the split, independent of the
        # target i.
        return (_hash(self.seed, pos, _SALT_SRC) % np.uint64(self.n)).astype(np.int64)


class _MemorySource:
    """The decoded split as numpy arrays (numpy's gather and mirrored copy are far cheaper than
    torch's on uint8)."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y.numpy()

    def batch(self, idx, flips=None):
        x = self.x[idx]
        if flips is not None and flips.any() and x.ndim == 4:
            x[flips] = x[flips][..., ::-1]
        return torch.from_numpy(x), torch.from_numpy(self.y[idx])


class _ShardSource:
    def __init__(self, reader):
        self.reader = reader

    def batch(self, idx, flips=None):
        """Decode straight into one preallocated batch array (flipped samples copied mirrored)."""
        out, ys = None, np.empty(len(idx), np.int64)
        for k, i in enumerate(idx):
            a, ys[k] = self.reader.read(int(i))
            if a.ndim == 3:
                a = (a[:, ::-1] if flips is not None and flips[k] else a).transpose(
                    2, 0, 1
                )  # HWC -> CHW
            if out is None:
                out = np.empty((len(idx),) + a.shape, a.dtype)
            out[k] = a
        return torch.from_numpy(out), torch.from_numpy(ys)


class _BatchDataset(torch.utils.data.Dataset):
    """dataset[list of stream positions] -> one batch dict (uint8 images; floats made in the main
    process)."""

    def __init__(self, source, stream):
        self.source, self.stream = source, stream

    def __getitem__(self, positions):
        pos = np.asarray(positions, np.int64)
        try:
            x, y = self.source.batch(self.stream.index(pos), self.stream.flips(pos))
            out = {"x": x, "y": y}
            if self.stream.paired:
                out["x_src"] = self.source.batch(
                    self.stream.source(pos), self.stream.flips(pos, _SALT_SRC_FLIP)
                )[0]
        except UserError as e:  # hand back the message itself, not a worker traceback
            return {"error": str(e)}
        return out


class _Positions(torch.utils.data.Sampler):
    """Global batch k covers positions start + k*B*W + [0, B*W); rank r takes its slice r*B + [0,
    B)."""

    def __init__(self, start, batch, rank, world_size):
        self.start, self.batch, self.rank, self.world_size = start, batch, rank, world_size

    def __iter__(self):
        base = self.start + self.rank * self.batch
        while True:
            yield list(range(base, base + self.batch))
            base += self.batch * self.world_size


def make_loader(cfg, batch_per_rank, rank=0, world_size=1, seed=0, start_sample=0, device=None):
    """Infinite iterator of {"x": float [-1,1] NCHW or [B,d], "y": long [B] (, "x_src")}.

    With `device` (e.g. cuda), batches arrive there: pinned uint8 is copied (4x fewer bytes than
    float32) and converted on the device.

    `start_sample` = global samples consumed so far; the batches that follow equal those of an
    uninterrupted stream with the same seed, world size and per-rank batch, whatever `num_workers`
    is.
    """
    for key, value, low in (
        ("data.num_workers", cfg.num_workers, 0),
        ("data.prefetch", cfg.prefetch, 1),
        ("batch_per_rank", batch_per_rank, 1),
        ("start_sample", start_sample, 0),
    ):
        if value < low:
            raise ConfigError(f"{key}: expected an integer >= {low}, got {value}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} outside world size {world_size}")
    reader = ShardReader(cfg.shards, cfg.split, verify_sha256=cfg.verify_sha256)
    if reader.n == 0:
        raise UserError(f"{Path(cfg.shards) / 'manifest.json'}: split '{cfg.split}' is empty")
    man = read_manifest(cfg.shards)
    in_memory = cfg.in_memory
    if in_memory is None:
        per_sample = (
            (man.get("channels") or 1) * (man.get("resolution") or 1) ** 2
            if man.get("kind") == "image"
            else 4 * (man.get("dim") or 1)
        )
        in_memory = per_sample * reader.n <= IN_MEMORY_AUTO_BYTES
    source = (
        _MemorySource(*load_split(cfg.shards, cfg.split)) if in_memory else _ShardSource(reader)
    )
    stream = Stream(reader.n, seed, cfg.shuffle, cfg.xflip, cfg.paired)
    workers = 0 if in_memory else cfg.num_workers
    loader = torch.utils.data.DataLoader(
        _BatchDataset(source, stream),
        batch_size=None,
        sampler=_Positions(int(start_sample), int(batch_per_rank), int(rank), int(world_size)),
        num_workers=workers,
        prefetch_factor=cfg.prefetch if workers else None,
        pin_memory=cfg.pin_memory and device is not None and torch.device(device).type == "cuda",
    )
    return _batches(loader, device)


def _checked(loader):
    for batch in loader:
        if "error" in batch:
            raise UserError(batch["error"])
        yield batch


def _batches(loader, device):
    for batch in _checked(loader):
        if device is not None:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        yield {k: (to_float(v) if k.startswith("x") else v) for k, v in batch.items()}
