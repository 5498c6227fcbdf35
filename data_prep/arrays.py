"""Array-shaped sources: CIFAR-10 python tarball, downsampled-ImageNet npz, sklearn digits, 2-D GMM
toy data.

Each `*_splits(...)` returns (splits, meta, totals) for `bcmcore.shards.write_dataset`.
"""

import pickle
import re
import tarfile
from pathlib import Path

import numpy as np

from bcmcore.config import UserError
from bcmcore.shards import chunks
from data_prep import Format


def require_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    return path


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow only the numpy pieces an array needs (no arbitrary code)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"disallowed global {module}.{name}")
        return super().find_class(module, name)


def _get(d, key):
    return d.get(key.encode(), d.get(key)) if isinstance(d, dict) else None


def _cifar_member(tar, path, name):
    for m in tar.getmembers():
        if m.isfile() and Path(m.name).name == name:
            try:
                return _ArrayUnpickler(tar.extractfile(m), encoding="bytes").load()
            except Exception as e:
                raise UserError(
                    f"{path}: member {m.name} is not a CIFAR-10 python pickle ({e})"
                ) from None
    raise UserError(f"{path}: no member '{name}' (expected the official cifar-10-python.tar.gz)")


def _cifar_batch(tar, path, name):
    d = _cifar_member(tar, path, name)
    data, labels = _get(d, "data"), _get(d, "labels")
    if data is None or labels is None:
        raise UserError(f"{path}: {name} lacks 'data'/'labels'")
    data = np.asarray(data)
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or len(data) != len(labels)
    ):
        raise UserError(
            f"{path}: {name}: expected uint8 data [N, 3072] and N labels, got "
            f"{data.dtype} {list(data.shape)} and {len(labels)} labels"
        )
    # Rows are channel-planar (1024 R, 1024 G, 1024 B, each row-major 32x32): -> [N, H, W, C].
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, np.int64)


def cifar10_splits(src, shard_size):
    path = require_file(
        src, "CIFAR-10 python tarball (cifar-10-python.tar.gz from cs.toronto.edu/~kriz)"
    )
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{path}: not a readable tarball ({e})") from None
    with tar:
        names = _get(_cifar_member(tar, path, "batches.meta"), "label_names")
        train = [_cifar_batch(tar, path, f"data_batch_{i}") for i in range(1, 6)]
        test = _cifar_batch(tar, path, "test_batch")
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None
    meta = {
        "dataset": "cifar10",
        "kind": "image",
        "resolution": 32,
        "channels": 3,
        "num_classes": 10,
        "class_names": class_names,
        "source": str(path.resolve()),
    }
    splits = {"train": chunks(x, y, shard_size), "test": chunks(*test, shard_size)}
    return splits, meta, {"train": len(x), "test": len(test[0])}


def _npz_parts(src):
    src = Path(src)
    if not src.is_dir():
        raise UserError(
            f"{src}: expected a directory holding Imagenet64_train_part*.npz and "
            "Imagenet64_val_data.npz"
        )
    parts = sorted(
        src.glob("Imagenet*_train_part*.npz"),
        key=lambda p: int(re.search(r"part(\d+)", p.name).group(1)),
    )
    val = sorted(src.glob("Imagenet*_val_data.npz"))
    if not parts:
        raise UserError(
            f"{src}: no Imagenet64_train_part*.npz found (stage the downsampled ImageNet npz files)"
        )
    return {"train": parts, "val": val}


def _npz_load(path, key, resolution=None):
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npz ({e})") from None
    with npz:
        if "data" not in npz.files or "labels" not in npz.files:
            raise UserError(f"{path}: expected keys 'data' and 'labels', found {sorted(npz.files)}")
        a = npz[key]
    if key == "labels":
        a = np.asarray(a, np.int64).reshape(-1)
        if len(a) and (a.min() < 1 or a.max() > 1000):
            raise UserError(
                f"{path}: labels must be 1-based class ids in 1..1000, found {a.min()}..{a.max()}"
            )
        return a - 1  # 1-based on disk -> 0-based
    d = 3 * resolution * resolution
    if a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] != d:
        raise UserError(
            f"{path}: expected uint8 data [N, {d}] (3x{resolution}x{resolution} channel-planar), "
            f"got {a.dtype} {list(a.shape)}: wrong image size?"
        )
    return a.reshape(-1, 3, resolution, resolution).transpose(0, 2, 3, 1)


class _NpzPart:
    """Lazily loaded part file: the writer asks for one shard at a time, the data array is read
    once."""

    def __init__(self, path, resolution, labels, shard_size):
        self.path, self.resolution, self.labels, self.shard_size = (
            path,
            resolution,
            labels,
            shard_size,
        )

    def chunks(self):
        x = _npz_load(self.path, "data", self.resolution)
        if len(x) != len(self.labels):
            raise UserError(f"{self.path}: {len(x)} images but {len(self.labels)} labels")
        yield from chunks(x, self.labels, self.shard_size)


def imagenet_npz_splits(src, resolution, shard_size):
    files = _npz_parts(src)
    splits, totals = {}, {}
    for split, paths in files.items():
        if not paths:
            continue
        parts = [_NpzPart(p, resolution, _npz_load(p, "labels"), shard_size) for p in paths]
        totals[split] = sum(len(p.labels) for p in parts)
        splits[split] = (c for p in parts for c in p.chunks())  # shards never span part files
    meta = {
        "dataset": f"imagenet{resolution}",
        "kind": "image",
        "resolution": resolution,
        "channels": 3,
        "num_classes": 1000,
        "class_names": None,
        "source": str(Path(src).resolve()),
        "label_note": "labels = downsampled-ImageNet 1-based ids minus 1",
    }
    return splits, meta, totals


def digits_upscaled(resolution=8):
    """sklearn's 8x8 digits (0..16) as uint8 [N, R, R, 1]: scaled by 255/16, then bilinear
    upscaling (R = 8, the default and the demo's: the images as they are).

    Bilinear (not nearest): smooth strokes like a real downsampled image, no 2x2 block edges for a
    small model to spend capacity on; every 8x8 value is still recoverable from the 16x16 image.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.rint(d.images * (255 / 16)).astype(np.uint8)
    x = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.BILINEAR))
            for im in small
        ]
    )
    return x[..., None], d.target.astype(np.int64)


def digits_splits(shard_size, resolution=8, test_count=300, seed=0):
    x, y = digits_upscaled(resolution)
    if not 0 <= test_count < len(x):
        raise UserError(f"--test-count: expected 0..{len(x) - 1}, got {test_count}")
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = np.sort(perm[:test_count]), np.sort(perm[test_count:])
    meta = {
        "dataset": "digits",
        "kind": "image",
        "resolution": resolution,
        "channels": 1,
        "num_classes": 10,
        "class_names": [str(i) for i in range(10)],
        "source": "sklearn.datasets.load_digits",
        "channels_note": "1-channel grayscale; repeat to 3 channels for Inception features",
    }
    splits = {"train": chunks(x[train], y[train], shard_size)}
    totals = {"train": len(train)}
    if test_count:
        splits["test"], totals["test"] = chunks(x[test], y[test], shard_size), len(test)
    return splits, meta, totals


def gmm2d_splits(shard_size, n_train, n_test, seed=0, params=None):
    from bcmcore.toy import DEMO_GMM, GaussianMixture

    if params is not None:
        import json

        path = require_file(params, "GMM parameter file (JSON with means, stds, weights)")
        try:
            gmm = GaussianMixture.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: expected JSON {{means, stds, weights}} ({e})") from None
    else:
        gmm = DEMO_GMM
    rng = np.random.default_rng(seed)
    splits, totals = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        if n:
            x, k = gmm.sample(n, rng)
            splits[split], totals[split] = chunks(x.astype(np.float32), k, shard_size), n
    meta = {
        "dataset": "gmm2d",
        "kind": "vector",
        "resolution": None,
        "channels": None,
        "dim": gmm.dim,
        "num_classes": len(gmm.weights),
        "class_names": None,
        "source": "bcmcore.toy",
        "toy": gmm.to_dict(),
    }
    return splits, meta, totals


FORMATS = {
    "cifar10": Format(
        "CIFAR-10 python tarball",
        lambda a, n: cifar10_splits(a.src, n),
        src="path of cifar-10-python.tar.gz (read in place)",
    ),
    "imagenet-npz": Format(
        "downsampled ImageNet npz files",
        lambda a, n: imagenet_npz_splits(a.src, a.resolution, n),
        src="directory with Imagenet64_train_part*.npz and Imagenet64_val_data.npz",
        resolution=64,
    ),
    # 8: the digits' own pixels, as the demo uses them (16 upscales them bilinearly)
    "digits": Format(
        "scikit-learn's handwritten digits, the offline demo set",
        lambda a, n: digits_splits(n, a.resolution, a.test_count, a.seed),
        resolution=8,
        options=(
            ("--test-count", "count", 300, "seeded test split size (default 300)"),
            ("--seed", "count", 0, "split seed"),
        ),
    ),
    "gmm2d": Format(
        "2-D Gaussian-mixture toy data (bcmcore.toy.DEMO_GMM unless --params)",
        lambda a, n: gmm2d_splits(n, a.n_train, a.n_test, a.seed, a.params),
        options=(
            ("--n-train", "positive", 65536, "training points"),
            ("--n-test", "count", 8192, "test points"),
            ("--seed", "count", 0, "sampling seed"),
            ("--params", "text", None, "JSON file {means, stds, weights} (default DEMO_GMM)"),
        ),
    ),
}
