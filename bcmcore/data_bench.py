"""`bcm bench data`: decoded images/s of the shard loader vs an in-memory tensor dataset, side by
side.

Synthetic smooth RGB images (PNG-compressible like photos) are written as real shards at each
resolution; every row reads the same number of batches after a warm-up that absorbs worker start-up.
The reference is the usual TensorDataset + DataLoader over decoded uint8 tensors with the same
number of workers; the loader's own in-memory mode (one batched gather, no workers) is printed as
the absolute ceiling.
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _images(n, res, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, res // 4, res // 4, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(a).resize((res, res), Image.BICUBIC)) for a in low])


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


def benchmark(resolutions=(32, 64), workers=(0, 1, 2), n=4096, batch=128, batches=20, dir=None):
    """Print one row per (resolution, workers): shard loader vs in-memory img/s and their ratio;
    returns the rows (res, workers, shard img/s, in-memory img/s)."""
    from bcmcore.data import DataConfig, load_split, make_loader
    from bcmcore.shards import chunks, write_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(dir or tmp)
        for res in resolutions:
            out = root / f"bench{res}"
            x = _images(n, res)
            meta = {
                "dataset": f"bench{res}",
                "kind": "image",
                "resolution": res,
                "channels": 3,
                "num_classes": 1,
            }
            write_dataset(out, {"train": chunks(x, np.zeros(n, np.int64), 1024)}, meta)
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
                cfg = DataConfig(shards=str(out), xflip=True, in_memory=False, num_workers=w)
                shard = _rate(make_loader(cfg, batch, seed=0), batch, batches)
                mem = _rate(_tensor_loader(xt, yt, batch, w, 0), batch, batches)
                rows.append((res, w, shard, mem))
                print(
                    f"  {res}x{res} workers={w}: shards {shard:9.0f} img/s   in-memory {mem:9.0f} "
                    "img/s",
                    flush=True,
                )
    print(f"\n{'res':>5} {'workers':>7} {'shards img/s':>13} {'in-memory img/s':>16} {'ratio':>6}")
    for res, w, shard, mem in rows:
        print(f"{res:>5} {w:>7} {shard:>13.0f} {mem:>16.0f} {shard / mem:>6.2f}")
    print(
        f"(batch {batch}, {batches} timed batches, {n} images, torch threads "
        f"{torch.get_num_threads()})"
    )
    return rows
