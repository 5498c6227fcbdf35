"""`bcm eval --images`: score any set of images (a folder of PNGs, an npz, a split of a shard
dir) under the sweep's protocol, against a dataset split's reference statistics, another image
set, or precomputed statistics (an ADM reference-batch npz holding `mu` / `sigma`).

The features, the reference statistics of a dataset split (and their cache) and the scores come
from the sweep's own code (metrics/scoring.py, fid.reference_stats), with the sweep's batch size:
the images a sweep row scored (spec `save_samples`) give that row's numbers back exactly.
"""

import json
import time
from pathlib import Path

import numpy as np

from bcmcore import dist
from bcmcore.config import UserError
from bcmcore.metrics import fid as fidlib
from bcmcore.metrics import report, scoring
from bcmcore.metrics.features import build_extractor
from bcmcore.runner import save_npz

STATS_FORMAT = "bcm-image-stats/1"


def _is_shards(path):
    return (Path(path) / "manifest.json").is_file()


def data_image_shape(shard_dir):
    """(C, H, W) of a shard dir's images; vector (toy) data has no images to score."""
    from bcmcore.shards import read_manifest

    m = read_manifest(shard_dir)
    if m.get("kind") == "vector":
        raise UserError(f"{shard_dir}: vector data (toy); `bcm eval --images` scores images")
    return m["channels"], m["resolution"], m["resolution"]


def load_set(source, flag, split="test", shape=None):
    """An image set -> (uint8 [N, C, H, W] numpy, seeds text). source: a shard dir (its `split`),
    a folder of PNGs or an npz (arr_0 / images, uint8 NHWC). shape: the (C, H, W) the features
    need (the demo classifier: the data's); None: any size, converted to RGB (Inception resizes
    to 299 x 299 itself, and repeats grey, as clean-fid's PIL convert("RGB") does)."""
    from bcmcore.runner import read_images

    source = Path(source)
    if _is_shards(source):
        from bcmcore.data import load_split

        data_image_shape(source)
        x = load_split(source, split)[0].numpy()
        x = x if shape is None or x.shape[1] == shape[0] else np.repeat(x, shape[0], 1)
        seeds = ""
    else:
        x = read_images(source, shape[0] if shape else None, flag)[0].transpose(0, 3, 1, 2)
        seeds = _seeds_text(source)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        c, h, w = shape
        raise UserError(
            f"{flag} {source}: {x.shape[2]}x{x.shape[3]} images, but the demo classifier takes "
            f"the data's {c}-channel {h}x{w} images (it does not resize; resize them first)"
        )
    return np.ascontiguousarray(x), seeds


def _seeds_text(path):
    """The seeds of an npz written by the sweep or `bcm sample` (its `seeds` array), else ""."""
    if path.suffix != ".npz":
        return ""
    with np.load(path) as d:
        seeds = d["seeds"] if "seeds" in d.files else np.zeros(0)
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) else ""


def load_stats(path, extractor):
    """Reference statistics from an npz with `mu` [D] and `sigma` [D, D] (ADM's reference batch,
    or the stats.npz `bcm eval --images` writes) -> {mu, sigma, pr_feats: None, meta}. D must be
    the extractor's dimension, and a file that names its features must name these."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--ref-stats {path}: file not found")
    try:
        with np.load(path) as d:
            files = d.files
            if "mu" not in files or "sigma" not in files:
                hint = " (it holds images: give it as --ref)" if "arr_0" in files else ""
                raise UserError(
                    f"--ref-stats {path}: expected arrays 'mu' and 'sigma'{hint}; it has "
                    f"{', '.join(files) or 'no arrays'}"
                )
            mu, sigma = np.asarray(d["mu"], np.float64), np.asarray(d["sigma"], np.float64)
            meta = json.loads(str(d["meta"])) if "meta" in files else {}
    except (OSError, ValueError) as e:
        raise UserError(f"--ref-stats {path}: not a readable .npz file ({e})") from None
    dim = extractor.dim
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise UserError(
            f"--ref-stats {path}: mu {mu.shape} and sigma {sigma.shape} do not fit the "
            f"{extractor.key} features ({dim}-d: mu ({dim},), sigma ({dim}, {dim}))"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"--ref-stats {path}: mu / sigma hold NaN or infinite values")
    named = meta.get("features") or meta.get("extractor")
    if named and named != extractor.key:
        raise UserError(
            f"--ref-stats {path}: statistics of features {named!r}, but the images are scored "
            f"with {extractor.key!r} (give the same --features, or recompute the statistics)"
        )
    return {"mu": mu, "sigma": sigma, "pr_feats": None, "meta": meta}


def _pick_metrics(requested, stats_only, extractor):
    """The metrics to compute: `requested` (None: all the reference allows), each checked."""
    unknown = sorted(set(requested or ()) - set(scoring.METRICS))
    if unknown or requested == [] or "" in (requested or ()):
        raise UserError(
            f"--metrics: expected a comma-separated subset of {','.join(scoring.METRICS)}, got "
            f"{','.join(requested)!r}"
        )
    need_feats = ("pr", "kid")
    if requested is None:  # all the reference (and the network's classifier layer) allows
        requested = [m for m in scoring.METRICS if not (stats_only and m in need_feats)]
        requested = [m for m in requested if m != "is" or extractor.logits is not None]
    elif stats_only and set(requested) & set(need_feats):
        raise UserError(
            "--metrics pr / kid need reference features; --ref-stats gives only mu / sigma "
            "(FID only: give the reference images with --ref, or drop pr and kid)"
        )
    if "is" in requested and extractor.logits is None:
        raise UserError(f"--metrics is: the {extractor.key} features have no classifier layer")
    return [m for m in scoring.METRICS if m in requested]


def evaluate_images(
    images, out, spec, ref=None, ref_stats=None, metrics=None, split="test", limit=None,
    device=None, progress=True,
):  # fmt: skip
    """Score `images` under `spec`'s protocol (features, batch size, P/R, KID and IS settings)
    against `ref` (an image set), `ref_stats` (an npz of mu / sigma) or spec.dataset's
    spec.ref_split. Rank 0 writes out/fid_table.csv (the sweep's columns), out/eval_info.json and
    out/stats.npz (mu / sigma of the images, usable as --ref-stats). -> the row."""
    t0 = time.time()
    if spec.features.kind == "raw":
        raise UserError("features.kind raw (vector data): `bcm eval --images` scores images")
    if spec.features.kind == "demo" and not spec.dataset:
        raise UserError(
            "--features demo: needs --dataset SHARD_DIR (the demo classifier is trained on it)"
        )
    if spec.features.kind == "inception" and not spec.features.inception_path:
        raise UserError(
            "--features clean / legacy_tensorflow: needs --inception-path (the staged "
            "inception-2015-12-05.pt, or its folder)"
        )
    extractor = build_extractor(spec.features, spec.dataset, device)
    shape = data_image_shape(spec.dataset) if spec.features.kind == "demo" else None
    chosen = _pick_metrics(metrics, ref_stats is not None, extractor)
    show = progress and dist.is_main()

    def feats_of(x, name):
        fn = lambda v: extractor.features(v, spec.batch_size, f"features {name}", show)  # noqa: E731
        return scoring.sharded_features(x, fn)

    x, seeds = load_set(images, "--images", split, shape)
    x = x[:limit] if limit else x
    if ref_stats is not None:
        reference = load_stats(ref_stats, extractor)
        ref_info = {"kind": "statistics (mu / sigma)", "path": str(ref_stats)}
    elif ref is not None:
        xr, _ = load_set(ref, "--ref", spec.ref_split, shape)  # a shard dir: its --split
        fr = feats_of(xr, Path(ref).name)
        mu = sigma = None  # the Gaussian fit only where FID is asked for (it needs n > dim)
        if "fid" in chosen:
            mu, sigma = fidlib.feature_stats(fr, f"--ref {ref}")
        pr = fr[fidlib.pr_subset(len(fr), spec.pr_real)].astype(np.float32)
        reference = {"mu": mu, "sigma": sigma, "pr_feats": pr, "meta": {"n": len(fr)}}
        ref_info = {"kind": "images", "path": str(ref), "count": len(fr)}
    else:
        if not spec.dataset:
            raise UserError(
                "give a reference: --dataset SHARD_DIR, --ref IMAGES or --ref-stats NPZ"
            )
        ds = spec.dataset
        reference = fidlib.reference_stats(
            ds, spec.ref_split, extractor, lambda v: feats_of(v, f"{spec.ref_split} split"),
            spec.pr_real,
        )  # fmt: skip
        ref_info = {"kind": "dataset split", "path": str(ds), "split": spec.ref_split}
        ref_info["count"] = reference["meta"].get("n")
    f = feats_of(x, Path(images).name)
    what = f"--images {images}"
    if "is" in chosen and len(f) < spec.is_splits:
        raise UserError(f"{what}: {len(f)} images; the Inception Score needs {spec.is_splits}")
    if "fid" in chosen:  # precision/recall and KID check their own counts (prdc, kid)
        fidlib.check_count(len(f), extractor.dim, what)
    key = extractor.key
    scores = scoring.score(f, reference, spec, extractor, key, device or "cpu", chosen, what)
    name = Path(images).stem + (f"-{split}" if _is_shards(images) else "")
    row = {
        "model": name,
        "kind": "images",
        **scores,
        "samples": len(f),
        "checkpoint": str(images),
        "seeds": seeds,
        "seconds": round(time.time() - t0, 2),
    }
    notes = []
    if ref_stats is not None and metrics is None:
        notes.append("FID only against the reference: --ref-stats holds mu / sigma, no features")
    info = {
        "images": str(images) + (f" ({split} split)" if _is_shards(images) else ""),
        "reference": ref_info,
        "features": extractor.key,
        "metrics": chosen,
        "batch_size": spec.batch_size,
        "notes": notes,
        "row": row,
    }
    if dist.is_main():
        if len(f) > extractor.dim:
            mu, sigma = fidlib.feature_stats(f, what)
            meta = {"format": STATS_FORMAT, "features": extractor.key, "n": len(f)}
            save_npz(Path(out) / "stats.npz", {"mu": mu, "sigma": sigma, "meta": json.dumps(meta)})
        report.write_images(out, row, info)
        for n in notes:
            print(f"[eval] note: {n}", flush=True)
    dist.barrier()
    return row
