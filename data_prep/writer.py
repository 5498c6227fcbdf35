"""The common shard writer: chunks of samples -> deterministic WebDataset tars + index + manifest
(last).

Determinism: members are written in key order with fixed headers (USTAR, mtime 0, uid/gid 0, empty
owner names, mode 0444) and PNGs with fixed encoder settings, so the same input gives byte-identical
shards whatever the number of processes. Atomicity: the old manifest is removed first, each shard is
written to a temporary name and renamed, and the manifest is written last, so a crash never leaves a
manifest that points at half-written shards.
"""

import collections
import io
import json
import multiprocessing
import os
import re
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from bcmcore.config import UserError
from bcmcore.data import FORMAT, KEY
from bcmcore.util import atomic_path, atomic_write_bytes, atomic_write_text, sha256_file

PNG_OPTIONS = {"format": "PNG", "compress_level": 6, "optimize": False}
SHARD_RE = re.compile(r"^[A-Za-z0-9_]+-\d{6}\.(tar|idx)$")


class ArrayChunk:
    """Samples already in memory: uint8 images [n, H, W, C] (or [n, H, W]) or float vectors [n,
    d]."""

    def __init__(self, x, y):
        self.x, self.y = x, np.asarray(y, np.int64)
        self.count = len(self.x)

    def load(self):
        return self.x, self.y


def chunks(x, y, shard_size):
    """Cut in-memory arrays into ArrayChunks of at most `shard_size` samples (one shard each)."""
    return [
        ArrayChunk(x[a : a + shard_size], y[a : a + shard_size])
        for a in range(0, len(x), shard_size)
    ]


def encode(x, y):
    """One sample -> [(ext, bytes)]: PNG for uint8 images (HWC or HW), .npy for float vectors; .cls
    last."""
    x = np.asarray(x)
    buf = io.BytesIO()
    if x.dtype == np.uint8:
        Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x).save(
            buf, **PNG_OPTIONS
        )
        ext = "png"
    else:
        np.save(buf, x.astype("<f4"), allow_pickle=False)
        ext = "npy"
    return [(ext, buf.getvalue()), ("cls", str(int(y)).encode())]


def write_tar(path, first_key, x, y):
    """Write samples to a tar at `path`; returns the int64 byte offset where each sample starts (+
    end)."""
    offsets = []
    with (
        open(path, "wb") as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for i in range(len(x)):
            offsets.append(tar.offset)
            for ext, data in encode(x[i], y[i]):
                info = tarfile.TarInfo(f"{KEY.format(first_key + i)}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
        offsets.append(tar.offset)
    return np.asarray(offsets, "<i8")


def _write_shard(task):
    """Pool worker: load one chunk, write `<split>-%06d.tar` + `.idx` atomically, return its
    manifest entry."""
    out, split, index, first_key, chunk = task
    x, y = chunk.load()
    name = f"{split}-{index:06d}"
    tar_path, idx_path = Path(out) / f"{name}.tar", Path(out) / f"{name}.idx"
    with atomic_path(tar_path) as tmp:
        offsets = write_tar(tmp, first_key, x, y)
        digest, size = sha256_file(tmp), os.path.getsize(tmp)
    atomic_write_bytes(idx_path, offsets.tobytes())
    return {
        "name": tar_path.name,
        "index": idx_path.name,
        "count": int(len(x)),
        "bytes": int(size),
        "sha256": digest,
        "first_key": int(first_key),
    }


def _bounded_map(fn, tasks, workers, depth):
    """Ordered map with at most `depth` tasks in flight (sources are loaded lazily: bounded
    memory)."""
    if workers <= 1:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    with ctx.Pool(workers) as pool:
        pending = collections.deque()
        for t in tasks:
            pending.append(pool.apply_async(fn, (t,)))
            if len(pending) >= depth:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _prepare_dir(out):
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out must be a directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # from now on the directory is "incomplete"
    for p in out.glob(".tmp-*"):
        p.unlink()
    return out


def write_dataset(out, splits, meta, workers=None, totals=None):
    """Write every split's chunks as shards, then `manifest.json` (atomically, last).

    splits: {split: iterable of chunks (`.count`, `.load() -> (x, y)`)}, each chunk becomes one
    shard;
    meta: dataset-level manifest fields (dataset, kind, resolution, channels/dim, num_classes,
    class_names, source, options, ...); totals: optional {split: sample count} for the progress bar.
    """
    out = _prepare_dir(out)
    workers = workers or os.cpu_count() or 1
    manifest = {"format": FORMAT, **meta, "splits": {}}
    total = sum((totals or {}).values()) or None
    try:
        _write_splits(out, splits, workers, total, manifest)
    except BaseException:
        for p in out.glob(".tmp-*"):  # workers killed mid-shard leave only temp names: remove them
            p.unlink(missing_ok=True)
        raise
    keep = {
        e[k] for s in manifest["splits"].values() for e in s["shards"] for k in ("name", "index")
    }
    for p in out.iterdir():  # shards of an earlier, larger conversion
        if SHARD_RE.match(p.name) and p.name not in keep:
            p.unlink()
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_splits(out, splits, workers, total, manifest):
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc=f"prep {manifest.get('dataset', '')}") as bar:
        for split, split_chunks in splits.items():

            def tasks(split=split, split_chunks=split_chunks):
                first = 0
                for index, chunk in enumerate(split_chunks):
                    yield (str(out), split, index, first, chunk)
                    first += chunk.count

            entries = []
            for entry in _bounded_map(_write_shard, tasks(), workers, depth=2 * workers):
                entries.append(entry)
                bar.update(entry["count"])
            manifest["splits"][split] = {
                "count": sum(e["count"] for e in entries),
                "shards": entries,
            }
