"""`bcm bench data`: decoded images/s of the shard loader vs an in-memory tensor dataset, side by
side, at any resolution (default 32, 64 and 256 px), with the shard loader's img/s per worker.

The images are written as real shards at each resolution; every row reads the same number of
batches after a warm-up that absorbs worker start-up. PNG decoding time depends on the content
(filter choice, how much zlib has to inflate), so the default content is natural: random crops of
the real photographs shipped with scikit-image and scikit-learn (1.6 PNG bytes per pixel at 256 px,
typical of LSUN / FFHQ PNGs). The reference is the usual TensorDataset + DataLoader over decoded
uint8 tensors with the same number of workers; the loader's own in-memory mode (one batched gather,
no workers) is printed as the absolute ceiling. What one GPU needs per preset:
bcmcore.bench.loader_need.
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bcmcore.config import UserError

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


def _photos():
    """The colour photographs shipped inside two dependencies (scikit-image's test images and
    scikit-learn's sample images: 300-512 px, natural content), as uint8 HWC arrays."""
    from skimage import data as sk
    from sklearn.datasets import load_sample_images

    sample = dict(zip(("china", "flower"), load_sample_images().images))
    return [sample[p] if p in sample else getattr(sk, p)() for p in PHOTOS]


def _images(n, res, content="photo", seed=0):
    """n uint8 [res, res, 3] images. PNG decoding time depends on the content: "photo" = random
    square crops (60-100 % of the short side) of real photographs, resized to res with Lanczos and
    randomly mirrored (natural statistics); "smooth" = bicubic-upsampled noise (the old default);
    "noise" = uniform noise (incompressible: zlib stores it, so it decodes fast at 32-64 px)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    if content == "noise":
        return rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8)
    if content == "smooth":
        low = rng.integers(0, 256, (n, max(1, res // 4), max(1, res // 4), 3), dtype=np.uint8)
        return np.stack(
            [np.asarray(Image.fromarray(a).resize((res, res), Image.BICUBIC)) for a in low]
        )
    if content != "photo":
        raise UserError(f"--content: expected photo, smooth or noise, got {content!r}")
    photos, out = [Image.fromarray(p) for p in _photos()], np.empty((n, res, res, 3), np.uint8)
    for k in range(n):
        p = photos[rng.integers(len(photos))]
        side = int(min(p.size) * rng.uniform(0.6, 1.0))
        x0, y0 = rng.integers(p.size[0] - side + 1), rng.integers(p.size[1] - side + 1)
        a = np.asarray(p.crop((x0, y0, x0 + side, y0 + side)).resize((res, res), Image.LANCZOS))
        out[k] = a[:, ::-1] if rng.integers(2) else a
    return out


def default_n(res):
    """Images written per resolution: 4096 up to 64 px, fewer above (same bytes, shorter set-up)."""
    return int(np.clip(4096 * (64 / res) ** 2, 256, 4096))


def _rate(it, batch, batches, warmup=2):
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        assert b["x"].dtype == torch.float32
    return batch * batches / (time.perf_counter() - t)


def _tensor_loader(x, y, batch, workers, seed):
    """The usual upper bound: TensorDataset + shuffling DataLoader over uint8 tensors, floats in the
    main process."""
    from bcmcore.images import to_float

    ds = torch.utils.data.TensorDataset(x, y)
    gen = torch.Generator().manual_seed(seed)
    while True:
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, generator=gen
        )
        for xb, yb in loader:
            yield {"x": to_float(xb), "y": yb}


def _checksum_cost(shards, repeats=5):
    """Per-sample CRC-32 check on vs off, alternated `repeats` times in this one run: (median ratio
    of decoded samples/s, min, max, median ratio of raw reads/s). Decoding is what training pays."""
    from bcmcore.shards import ShardReader

    readers = {on: ShardReader(shards, "train", checksums=on) for on in (True, False)}
    n = readers[True].n

    def rate(reader, op):
        t = time.perf_counter()
        for i in range(n):
            getattr(reader, op)(i)
        return n / (time.perf_counter() - t)

    ratios = {"read": [], "members": []}
    for _ in range(repeats):
        for op in ratios:
            on, off = rate(readers[True], op), rate(readers[False], op)
            ratios[op].append(on / off)
    dec = sorted(ratios["read"])
    return dec[len(dec) // 2], dec[0], dec[-1], sorted(ratios["members"])[repeats // 2]


def write_shards(root, res, n, content="photo"):
    """Write n `content` images of res x res as one real shard set under root; returns (its
    directory, mean PNG bytes per pixel)."""
    from bcmcore.shards import ShardReader, chunks, write_dataset

    out = Path(root) / f"bench{res}-{content}"
    meta = {
        "dataset": f"bench{res}",
        "kind": "image",
        "resolution": res,
        "channels": 3,
        "num_classes": 1,
    }
    write_dataset(
        out, {"train": chunks(_images(n, res, content), np.zeros(n, np.int64), 1024)}, meta
    )
    reader = ShardReader(out, "train")
    png = sum(len(reader.members(i)["png"]) for i in range(n))
    return out, png / (n * res * res)


def shard_rate(shards, workers, batch, batches):
    """Decoded img/s of the shard loader (make_loader, shards, x-flip) with `workers` processes."""
    from bcmcore.data import DataConfig, make_loader

    cfg = DataConfig(shards=str(shards), xflip=True, in_memory=False, num_workers=workers)
    return _rate(make_loader(cfg, batch, seed=0), batch, batches)


def benchmark(
    resolutions=(32, 64, 256),
    workers=(0, 1, 2),
    n=None,
    batch=128,
    batches=20,
    dir=None,
    content="photo",
):
    """Print one row per (resolution, workers): shard loader vs in-memory img/s, their ratio and the
    shard loader's img/s per worker; returns the rows (res, workers, shard img/s, in-memory img/s).
    n: images per resolution (default: default_n(res))."""
    from bcmcore.data import DataConfig, load_split, make_loader

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in resolutions:
            out, bpp = write_shards(dir or tmp, res, n or default_n(res), content)
            print(f"  {res}x{res} {content} images: PNG {bpp:.2f} bytes/pixel (raw RGB: 3)")
            xt, yt = load_split(out, "train")
            med, lo, hi, raw = _checksum_cost(out)
            print(
                f"  {res}x{res} per-sample CRC-32 check: decoded samples/s with/without "
                f"{med:.3f} (min {lo:.3f}, max {hi:.3f} of 5 alternated runs); raw reads {raw:.3f}"
            )
            gather = _rate(
                make_loader(DataConfig(shards=str(out), xflip=True, in_memory=True), batch, seed=0),
                batch,
                batches,
            )
            print(
                f"  {res}x{res} in-memory batched gather (make_loader in_memory=True): "
                f"{gather:.0f} img/s"
            )
            for w in workers:
                shard = shard_rate(out, w, batch, batches)
                mem = _rate(_tensor_loader(xt, yt, batch, w, 0), batch, batches)
                rows.append((res, w, shard, mem))
                print(
                    f"  {res}x{res} workers={w}: shards {shard:9.0f} img/s   in-memory {mem:9.0f} "
                    "img/s",
                    flush=True,
                )
    print(
        f"\n{'res':>5} {'workers':>7} {'shards img/s':>13} {'in-memory img/s':>16} {'ratio':>6} "
        f"{'shards img/s per worker':>24}"
    )
    for res, w, shard, mem in rows:
        print(
            f"{res:>5} {w:>7} {shard:>13.0f} {mem:>16.0f} {shard / mem:>6.2f} "
            f"{shard / max(w, 1):>24.0f}"
        )
    print(
        f"(batch {batch}, {batches} timed batches, {content} images, torch threads "
        f"{torch.get_num_threads()}; workers=0 decodes in the main process, counted as 1 worker)"
    )
    return rows
