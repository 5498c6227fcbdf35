"""Image-file sources: ILSVRC-style class folders (ImageNet) and flat folders (FFHQ, LSUN Bedroom).

Every image gets ADM's centre crop (BCM §8 / guided-diffusion preprocessing): halve with a BOX
filter while the short side is >= 2x the target, BICUBIC-resize so the short side equals the target,
crop the centre. LSUN's LMDB export is not read (it needs the `lmdb` C extension): export it to a
folder of images first.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from bcmcore.config import UserError
from bcmcore.images import read_image
from data_prep import Format

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def adm_center_crop(img, resolution):
    """PIL image -> uint8 array [R, R, C] by ADM's rule (anti-aliased by the BOX halvings)."""
    while min(img.size) >= 2 * resolution:
        img = img.resize((img.width // 2, img.height // 2), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), resample=Image.BICUBIC)
    a = np.asarray(img)
    top, left = (a.shape[0] - resolution) // 2, (a.shape[1] - resolution) // 2
    return a[top : top + resolution, left : left + resolution]


def load_image(path, resolution, channels=3):
    img = read_image(path, channels)  # every PIL mode by its meaning (16-bit grey, alpha, ...)
    if min(img.size) < resolution:
        raise UserError(
            f"{path}: image is {img.width}x{img.height}, smaller than the {resolution}px target "
            f"(wrong size: upscaling would invent detail)"
        )
    a = adm_center_crop(img, resolution)
    return a if channels == 3 else a[..., None]


class FileChunk:
    """One shard's worth of image files, decoded and cropped inside the pool worker."""

    def __init__(self, files, labels, resolution, channels=3):
        self.files, self.labels, self.resolution, self.channels = (
            files,
            labels,
            resolution,
            channels,
        )
        self.count = len(files)

    def load(self):
        x = np.stack([load_image(f, self.resolution, self.channels) for f in self.files])
        return x, np.asarray(self.labels, np.int64)


def list_images(folder):
    """Image files under `folder`, recursively, sorted by relative path (a stable, documented
    order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found")
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(sorted(EXTENSIONS))}) found")
    return files


def _file_chunks(files, labels, resolution, shard_size, channels=3):
    return [
        FileChunk(files[a : a + shard_size], labels[a : a + shard_size], resolution, channels)
        for a in range(0, len(files), shard_size)
    ]


def imagenet_folder_splits(src, resolution, shard_size):
    """`src/train/<wnid>/*.JPEG` (+ optional `src/val/<wnid>/*`): label = index of the wnid in
    sorted order."""
    src = Path(src)
    train_dir = src / "train"
    if not train_dir.is_dir():
        raise UserError(
            f"{train_dir}: not found (expected an ILSVRC-style folder: train/<wnid>/*.JPEG)"
        )
    wnids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not wnids:
        raise UserError(f"{train_dir}: no class folders (expected train/<wnid>/*.JPEG)")
    index = {w: i for i, w in enumerate(wnids)}
    splits, totals = {}, {}
    for split in ("train", "val"):
        d = src / split
        if not d.is_dir():
            continue
        files, labels = [], []
        for w in sorted(p.name for p in d.iterdir() if p.is_dir()):
            if w not in index:
                raise UserError(f"{d / w}: class folder not present in {train_dir}")
            fs = list_images(d / w)
            files += fs
            labels += [index[w]] * len(fs)
        splits[split] = _file_chunks(files, labels, resolution, shard_size)
        totals[split] = len(files)
    meta = {
        "dataset": f"imagenet{resolution}",
        "kind": "image",
        "resolution": resolution,
        "channels": 3,
        "num_classes": len(wnids),
        "class_names": wnids,
        "source": str(src.resolve()),
    }
    return splits, meta, totals


def folder_splits(src, resolution, shard_size, test_count=0, dataset="folder"):
    """Unlabelled flat folder: sorted files, the last `test_count` form the test split (FFHQ: 1,000
    of 70,000)."""
    files = list_images(src)
    if not 0 <= test_count < len(files):
        raise UserError(
            f"{src}: --test-count {test_count} must be below the number of images ({len(files)})"
        )
    n_train = len(files) - test_count
    splits = {"train": _file_chunks(files[:n_train], [-1] * n_train, resolution, shard_size)}
    totals = {"train": n_train}
    if test_count:
        splits["test"] = _file_chunks(files[n_train:], [-1] * test_count, resolution, shard_size)
        totals["test"] = test_count
    meta = {
        "dataset": dataset,
        "kind": "image",
        "resolution": resolution,
        "channels": 3,
        "num_classes": 0,
        "class_names": None,
        "source": str(Path(src).resolve()),
        "split_rule": f"sorted files; last {test_count} -> test",
    }
    return splits, meta, totals


def _flat(name, resolution, test_count, what):
    """A flat folder of images; the last `test_count` sorted files form the test split."""
    dataset = {"ffhq": "ffhq{}", "lsun-bedroom": "lsun_bedroom{}"}.get(name, "folder")
    return Format(
        what,
        lambda a, n: folder_splits(
            a.src, a.resolution, n, a.test_count, dataset.format(a.resolution)
        ),
        src="image folder (searched recursively, files sorted by path)",
        resolution=resolution,
        options=(
            (
                "--test-count",
                "count",
                test_count,
                f"last N sorted files form the test split (default {test_count})",
            ),
        ),
    )


FORMATS = {
    "imagenet-folder": Format(
        "ILSVRC-style JPEG folders, ADM centre crop",
        lambda a, n: imagenet_folder_splits(a.src, a.resolution, n),
        src="directory with train/<wnid>/*.JPEG (and optionally val/<wnid>/*)",
        resolution=64,
    ),
    "ffhq": _flat("ffhq", 64, 1000, "FFHQ images (BCM: first 69,000 train, last 1,000 test)"),
    "lsun-bedroom": _flat("lsun-bedroom", 256, 0, "LSUN Bedroom exported to a folder of images"),
    "folder": _flat("folder", 64, 0, "any flat folder of images (unlabelled)"),
}
