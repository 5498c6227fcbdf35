"""Items sharded across ranks, and the files `bcm sample | invert | edit` read and write.

Each rank takes every world_size-th item (seed or image), runs it in batches with a progress bar and
writes its part; rank 0 merges the parts in item order into one .npz and a PNG grid (atomic writes).
Sample i depends only on seed i, so results do not depend on the batch size or the number of GPUs.
"""

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bcmcore import dist
from bcmcore.config import UserError
from bcmcore.util import atomic_path, atomic_write_text, remove_tmp


def save_npz(path, arrays):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def run_sharded(n, batch, fn, out, name):
    """fn(positions) -> dict of per-item arrays; this rank runs positions rank::world. Rank 0 gets
    the merge (other ranks None)."""
    r, ws = dist.rank(), dist.world_size()
    mine = np.arange(r, n, ws)
    parts = [
        fn(mine[i : i + batch])
        for i in tqdm(
            range(0, len(mine), batch), desc=name, unit="batch", disable=not dist.is_main()
        )
    ]
    local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    local["_pos"] = mine
    if ws > 1:  # per-rank parts on the shared file system, merged by rank 0
        save_npz(out / f".part-{name}-{r:05d}.npz", local)
        dist.barrier()
        if not dist.is_main():
            return None
        files = [out / f".part-{name}-{i:05d}.npz" for i in range(ws)]
        loaded = [dict(np.load(f)) for f in files]
        keys = next((list(d) for d in loaded if len(d) > 1), ["_pos"])
        local = {k: np.concatenate([d[k] for d in loaded if k in d]) for k in keys}
        for f in files:
            f.unlink()
    order = np.argsort(local.pop("_pos"), kind="stable")
    return {k: v[order] for k, v in local.items()}


def write_outputs(out, name, arrays, grid_images, grid_n, ncol=None, info=None):
    """Rank 0: name.npz (uint8 NHWC images as arr_0, ADM-evaluator style), name.png, name.json."""
    from bcmcore.images import save_grid

    remove_tmp(out, f"{name}.")  # left by a killed earlier run of this command
    save_npz(out / f"{name}.npz", arrays)
    if grid_images is not None and grid_images.ndim == 4 and grid_n:
        save_grid(out / f"{name}.png", grid_images[:grid_n].transpose(0, 3, 1, 2), ncol=ncol)
    if info is not None:
        atomic_write_text(out / f"{name}.json", json.dumps(info, indent=2) + "\n")
    dist.print0(f"wrote {out / name}.npz" + (f" and {name}.png" if grid_images is not None else ""))


def grid_cols(n):
    return max(1, int(np.ceil(np.sqrt(n))))


def pairs_grid(*columns_and_n):
    """Interleave image arrays column-wise: orig_i, result_i, ... (rows of the PNG hold several
    pairs)."""
    *cols, n = columns_and_n
    n = min(n, len(cols[0]))
    return np.stack([c[:n] for c in cols], 1).reshape(-1, *cols[0].shape[1:])


def load_inputs(data=None, split="test", input=None, shape=None):
    """Images to invert or edit -> (x uint8 [N, C, H, W] or float [N, d], y long [N] or None).

    data: a shard directory (its `split`), or input: an .npz (arr_0/images uint8 NHWC, optional
    labels/arr_1) or a folder of PNGs. shape: the network's (C, H, W): image files and npz images
    are converted to its C channels (bcmcore.images.convert_image) and their size checked."""
    from bcmcore.images import check_size

    if bool(data) == bool(input):
        raise UserError("give exactly one of --data SHARD_DIR or --input FILE.npz|PNG_DIR")
    if data:
        from bcmcore.data import load_split

        x, y = load_split(data, split)
        if shape and len(shape) == 3 and x.ndim == 4:
            x = check_size(x, shape, f"--data {data} ({split})")
        return x, y
    path = Path(input)
    x, y = read_images(path, shape[0] if shape and len(shape) == 3 else None, "--input")
    x = torch.as_tensor(x).permute(0, 3, 1, 2) if x.ndim == 4 else torch.as_tensor(x)
    if shape and len(shape) == 3:
        x = check_size(x, shape, f"--input {path}")
    return x, (None if y is None else torch.as_tensor(y).long())


def read_images(path, channels=None, flag="--input"):
    """A folder of PNGs or an .npz (arr_0 / images uint8 NHWC, ADM's batch layout; optional labels
    / arr_1) -> (uint8 NHWC numpy, labels or None). channels (1 or 3): PNGs of any PIL mode and npz
    images are converted to it (bcmcore.images.convert_image); None: PNGs to RGB, npz as stored.
    Every problem is one UserError naming the file (`flag`: the option that named it)."""
    from bcmcore.images import array_to_channels, read_image, require_uint8_nhwc

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise UserError(f"{flag} {path}: no .png files in this folder")
        x = []
        for f in files:  # every PIL mode by its meaning (images.convert_image)
            a = np.asarray(read_image(f, channels or 3))
            x.append(a[..., None] if a.ndim == 2 else a)
        for f, a in zip(files, x):
            if a.shape != x[0].shape:
                raise UserError(
                    f"{f}: image is {a.shape[1]}x{a.shape[0]}, {files[0].name} is "
                    f"{x[0].shape[1]}x{x[0].shape[0]} (one size per {flag} folder)"
                )
        return np.stack(x), None
    if path.suffix != ".npz" or not path.is_file():
        raise UserError(f"{flag} {path}: expected an existing .npz file or a folder of PNGs")
    try:
        d = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npz file ({e})") from None
    key = "images" if "images" in d else "arr_0"
    if key not in d:
        hint = " (it holds statistics mu / sigma, not images)" if "mu" in d else ""
        raise UserError(
            f"{path}: expected an array 'images' or 'arr_0' (uint8 NHWC){hint}; it has "
            f"{', '.join(d.files) or 'no arrays'}"
        )
    x, y = d[key], (d["labels"] if "labels" in d else d["arr_1"] if "arr_1" in d else None)
    require_uint8_nhwc(x, f"{path}: {key}")
    if channels:
        x = array_to_channels(x, channels, f"{path} ({key})")
    return x, y
