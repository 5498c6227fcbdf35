"""The on-disk shard format, both halves: writing (chunks of samples -> deterministic WebDataset
tars + index + manifest, last) and reading (manifest, random access through the index, checks).

On disk: `<split>-%06d.tar` holding, per sample, `<key>.png` (uint8 image) or `<key>.npy` (float32
vector) and `<key>.cls` (class label as text, -1 = unlabelled), key = `%08d` index within the
split; a sidecar `<split>-%06d.idx` (int64 byte offsets where each sample starts, plus the end,
then the CRC-32 of each sample's bytes as int64) and `manifest.json` (sizes and sha256 of every
file). The tars are plain WebDataset tars; the sidecar only adds random access and checks.

Corruption is caught by default: every sample read is checked against its CRC-32 (the bytes are in
memory anyway; `bcm bench data` prints the cost) and each index against its sha256 when a reader
opens, so a flipped byte or a replaced shard stops training with the shard and the sample named.
Shards of format 1 (no CRCs) stay readable: each shard's sha256 is checked once when a reader opens.

Determinism: members are written in key order with fixed headers (USTAR, mtime 0, uid/gid 0, empty
owner names, mode 0444) and PNGs with fixed encoder settings, so the same input gives byte-identical
shards whatever the number of processes. Atomicity: a dataset is written into a build folder beside
the target and swapped in whole when complete (bcmcore/dataset_swap.py): a failed prep leaves the
previous dataset as it was, and only files bcm wrote are ever removed.

Identity: `data_digest(shard_dir)` hashes what the samples are (every shard's and index's sha256,
the counts, the image geometry and classes; not the source path or the prep flags), so the training
recipe, the demo classifier and the reference statistics start over when the data changes.
"""

import collections
import hashlib
import io
import json
import multiprocessing
import os
import signal
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from bcmcore.config import UserError
from bcmcore.util import atomic_path, atomic_write_bytes, atomic_write_text, sha256_file

FORMAT = "bcm-shards/2"  # 2: per-sample CRC-32 in the index; 1 is still read (hashed at open)
READABLE = ("bcm-shards/1", FORMAT)
KEY = "{:08d}"
PNG_OPTIONS = {"format": "PNG", "compress_level": 6, "optimize": False}


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
        crcs = _sample_crcs(tmp, offsets)
    index = np.concatenate([offsets, crcs]).astype("<i8").tobytes()
    atomic_write_bytes(idx_path, index)
    return {
        "name": tar_path.name,
        "index": idx_path.name,
        "count": int(len(x)),
        "bytes": int(size),
        "sha256": digest,
        "index_sha256": hashlib.sha256(index).hexdigest(),
        "first_key": int(first_key),
    }


def _sample_crcs(path, offsets):
    """CRC-32 of each sample's bytes [offsets[k], offsets[k+1]) of the tar at `path`."""
    with open(path, "rb") as f:
        return np.asarray(
            [zlib.crc32(f.read(int(b - a))) for a, b in zip(offsets[:-1], offsets[1:])], np.int64
        )


def _bounded_map(fn, tasks, workers, depth):
    """Ordered map with at most `depth` tasks in flight (sources are loaded lazily: bounded
    memory)."""
    if workers <= 1:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    pool, done = ctx.Pool(workers, initializer=_worker_signals), False
    try:
        pending = collections.deque()
        for t in tasks:
            pending.append(pool.apply_async(fn, (t,)))
            if len(pending) >= depth:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        done = True
    finally:
        # done: the workers take their sentinels and exit. An error or an abandoned map: SIGTERM,
        # which _worker_signals makes fatal whatever handler the parent had.
        pool.close() if done else pool.terminate()
        pool.join()


def _worker_signals():
    """Pool workers: SIGTERM kills (a forked worker inherits the parent's Python handlers; one that
    only records the signal, as a training run's or submitit's do, made Pool.terminate wait
    forever), SIGINT is the parent's to handle (Ctrl-C reaches the whole process group)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def write_dataset(out, splits, meta, workers=None, totals=None):
    """Write every split's chunks as shards, then `manifest.json` (atomically, last).

    splits: {split: iterable of chunks (`.count`, `.load() -> (x, y)`)}, each chunk becomes one
    shard;
    meta: dataset-level manifest fields (dataset, kind, resolution, channels/dim, num_classes,
    class_names, source, options, ...); totals: optional {split: sample count} for the progress bar.
    """
    from bcmcore.dataset_swap import replacing

    workers = workers or os.cpu_count() or 1
    manifest = {"format": FORMAT, **meta, "splits": {}}
    total = sum((totals or {}).values()) or None
    with replacing(out, data_digest) as build:
        _write_splits(build, splits, workers, total, manifest)
        empty = [s for s, v in manifest["splits"].items() if not v["count"]]
        if not manifest["splits"] or empty:
            raise UserError(
                f"{out}: nothing to write for split '{empty[0]}'" if empty else f"{out}: no samples"
            )
        atomic_write_text(build / "manifest.json", json.dumps(manifest, indent=1) + "\n")
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


# ----------------------------------------------------------------------------------------------
# reading: manifest


def read_manifest(shard_dir):
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (write the shards with `bcm prep ...`)")
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") not in READABLE:
        raise UserError(
            f"{path}: expected a shard manifest with format '{FORMAT}' (got "
            f"{man.get('format') if isinstance(man, dict) else man!r}): rerun `bcm prep`"
        )
    return man


def data_digest(shard_dir):
    """Content digest (16 hex) of the dataset in `shard_dir`; None without a readable manifest."""
    try:
        man = json.loads((Path(shard_dir) / "manifest.json").read_text())
        what = {k: man.get(k) for k in ("kind", "resolution", "channels", "dim", "num_classes")}
        what["class_names"] = man.get("class_names")
        what["splits"] = {
            split: [[e["sha256"], e.get("index_sha256"), e["count"]] for e in v["shards"]]
            for split, v in sorted(man["splits"].items())
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _split_info(man, split, shard_dir):
    if split not in man["splits"]:
        raise UserError(
            f"{Path(shard_dir) / 'manifest.json'}: no split '{split}' "
            f"(has: {', '.join(sorted(man['splits']))})"
        )
    return man["splits"][split]


# -------------------------------------------------------------------------------------- tar reading


def _parse_members(chunk, path, key):
    """Split one sample's tar bytes into {ext: payload}; checks header checksums and member
    names."""
    out, pos = {}, 0
    while pos + 512 <= len(chunk):
        hdr = chunk[pos : pos + 512]
        try:
            stored = int(hdr[148:156].strip(b"\0 ") or b"-1", 8)
            size = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            stored = size = -1
        if stored != sum(hdr[:148]) + 256 + sum(hdr[156:]) or size < 0:
            raise UserError(
                f"{path}: corrupt tar header at byte {pos} of sample {key} (shard damaged: rewrite "
                "it)"
            )
        name = hdr[:100].split(b"\0", 1)[0].decode()
        stem, _, ext = name.partition(".")
        if stem != key or pos + 512 + size > len(chunk):
            raise UserError(
                f"{path}: expected members of sample {key}, found '{name}' (shard damaged)"
            )
        out[ext] = chunk[pos + 512 : pos + 512 + size]
        pos += 512 + -(-size // 512) * 512
    if "cls" not in out or not ({"png", "npy"} & set(out)):
        raise UserError(f"{path}: sample {key} lacks .png/.npy or .cls (shard damaged)")
    return out


def decode(members):
    """{ext: bytes} -> (uint8 [H, W, C] image or float32 [d] vector as numpy, int label)."""
    if "png" in members:
        with Image.open(io.BytesIO(members["png"]), formats=("PNG",)) as img:
            a = np.asarray(img)
        x = a[..., None] if a.ndim == 2 else a
    else:
        x = np.load(io.BytesIO(members["npy"]), allow_pickle=False)
    return x, int(members["cls"])


class ShardReader:
    """Random access to the samples of one split: read(i) -> (x, y). Opens files lazily in each
    process."""

    def __init__(self, shard_dir, split, verify_sha256=False, checksums=True):
        """verify_sha256: hash every shard now; checksums: check each sample's CRC-32 when read (off
        only to measure what it costs)."""
        shard_dir = Path(shard_dir)
        man = read_manifest(shard_dir)
        info = _split_info(man, split, shard_dir)
        legacy = man["format"] != FORMAT  # format 1: no per-sample CRCs, hash each shard once
        verify_sha256 = verify_sha256 or (legacy and checksums)
        self.paths, self.offsets, self.crcs, counts = [], [], [], []
        for s in info["shards"]:
            path, idx_path = shard_dir / s["name"], shard_dir / s["index"]
            for p in (path, idx_path):
                if not p.is_file():
                    raise UserError(f"{p}: shard file listed in the manifest is missing")
            if path.stat().st_size != s["bytes"]:
                raise UserError(
                    f"{path}: {path.stat().st_size} bytes, manifest says {s['bytes']} "
                    f"(truncated or replaced: rewrite the shards)"
                )
            if verify_sha256 and sha256_file(path) != s["sha256"]:
                raise UserError(f"{path}: sha256 does not match the manifest (corrupt or replaced)")
            index = idx_path.read_bytes()
            if not legacy and hashlib.sha256(index).hexdigest() != s.get("index_sha256"):
                raise UserError(
                    f"{idx_path}: sha256 does not match the manifest (index corrupt or replaced: "
                    f"rerun `bcm prep`)"
                )
            off = np.frombuffer(index, dtype="<i8")
            off, crc = (off, None) if legacy else (off[: s["count"] + 1], off[s["count"] + 1 :])
            if crc is not None and len(crc) != s["count"]:
                off = off[:0]  # reported just below
            if len(off) != s["count"] + 1 or (
                len(off) and (off[-1] > s["bytes"] or (np.diff(off) <= 0).any())
            ):
                raise UserError(
                    f"{idx_path}: index does not fit {path.name} (expected {s['count'] + 1} "
                    f"increasing offsets)"
                )
            self.paths.append(str(path))
            self.offsets.append(off)
            self.crcs.append(crc if checksums else None)
            counts.append(s["count"])
        self.start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n = int(self.start[-1])
        self._fds, self._pid = {}, None

    def __len__(self):
        return self.n

    def __getstate__(self):
        return {**self.__dict__, "_fds": {}, "_pid": None}

    def _fd(self, j):
        if self._pid != os.getpid():  # never share descriptors across a fork
            self._fds, self._pid = {}, os.getpid()
        if j not in self._fds:
            self._fds[j] = os.open(self.paths[j], os.O_RDONLY)
        return self._fds[j]

    def members(self, i):
        j = int(np.searchsorted(self.start, i, side="right") - 1)
        k = i - int(self.start[j])
        a, b = int(self.offsets[j][k]), int(self.offsets[j][k + 1])
        chunk = os.pread(self._fd(j), b - a, a)
        if len(chunk) != b - a:
            raise UserError(
                f"{self.paths[j]}: truncated (sample {KEY.format(i)} ends past the file)"
            )
        crc = self.crcs[j]
        if crc is not None and zlib.crc32(chunk) != crc[k]:
            raise UserError(
                f"{self.paths[j]}: sample {KEY.format(i)} fails its checksum (bytes {a}-{b} "
                f"changed: shard damaged or replaced; rerun `bcm prep`)"
            )
        return _parse_members(chunk, self.paths[j], KEY.format(i))

    def read(self, i):
        members = self.members(i)
        try:
            return decode(members)
        except (RuntimeError, ValueError, OSError) as e:
            j = int(np.searchsorted(self.start, i, side="right") - 1)
            raise UserError(
                f"{self.paths[j]}: sample {KEY.format(i)} does not decode ({e}); shard damaged"
            ) from None
