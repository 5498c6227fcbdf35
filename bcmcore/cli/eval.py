"""`bcm eval --spec FILE --out DIR` (an evaluation sweep, distributed when launched on several
ranks) and `bcm edit-rate` (class-editing success rate per w outside a sweep)."""

from bcmcore.cli._args import parser, positive_int
from bcmcore.config import UserError


def evaluate(argv):
    """Run an evaluation sweep (--spec), or score a set of images (--images) under its protocol."""
    p = parser(
        "bcm eval",
        "FID / precision / recall / IS / KID / inversion MSE, PSNR, SSIM, LPIPS sweep "
        "(tables, plots and sample grids under --out);\nwith --images: FID / precision / recall / "
        "IS / KID of any images (PNG folder, npz, shard split)\nagainst a dataset split, another "
        "image set (--ref) or an ADM-style mu / sigma npz (--ref-stats)",
    )
    p.add_argument(
        "--spec",
        help="sweep spec (YAML or JSON), see bcmcore/metrics/spec.py; with --images: the "
        "protocol only (dataset, ref_split, features, batch_size, P/R, KID and IS settings)",
    )
    p.add_argument("--out", required=True, help="output folder, e.g. results/<ds>/eval")
    p.add_argument(
        "--device", default=None, help="cpu to force the CPU (default: CUDA when available)"
    )
    p.add_argument(
        "--num-samples",
        type=positive_int,
        default=None,
        help="override the spec's num_samples; with --images: score the first N images",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("scoring a set of images (--images)")
    g.add_argument(
        "--images",
        help="images to score: a folder of PNGs, an npz (arr_0 / images, uint8 NHWC) or a "
        "shard dir (its --images-split)",
    )
    g.add_argument("--images-split", default="test", help="the split of a shard dir --images")
    ref = g.add_mutually_exclusive_group()
    ref.add_argument("--ref", help="reference images (PNG folder, npz, or a shard dir's --split)")
    ref.add_argument(
        "--ref-stats",
        help="reference statistics: an npz with mu / sigma (ADM's reference batch, or a "
        "stats.npz written here); FID (and IS) only",
    )
    g.add_argument(
        "--dataset", help="shard dir: the reference (its --split) and the demo classifier's data"
    )
    g.add_argument("--split", help="the dataset's reference split (default: the spec's, or train)")
    g.add_argument(
        "--features",
        choices=("demo", "clean", "legacy_tensorflow"),
        help="feature network: the demo classifier, or clean-fid's Inception in its clean or "
        "legacy_tensorflow mode (default: the spec's)",
    )
    g.add_argument("--inception-path", help="the staged inception-2015-12-05.pt (or its folder)")
    g.add_argument(
        "--metrics", help="comma-separated subset of fid,pr,kid,is (pr: precision and recall; "
        "default: all the reference allows)",
    )  # fmt: skip
    g.add_argument(
        "--batch-size", type=positive_int, help="images per feature batch (default: the spec's)"
    )
    args = p.parse_args(argv)
    if not args.spec and not args.images:
        p.error("give --spec FILE (a sweep) or --images DIR|NPZ (score images)")
    if args.images:
        return _score_images(args)
    for flag in ("ref", "ref_stats", "dataset", "split", "features", "inception_path", "metrics"):
        if getattr(args, flag) is not None:
            p.error(f"--{flag.replace('_', '-')}: only with --images")

    import dataclasses

    from bcmcore import dist
    from bcmcore.metrics.spec import load_spec
    from bcmcore.metrics.sweep import run
    from bcmcore.util import remove_tmp

    spec = load_spec(args.spec)
    dist.init(args.device)
    if dist.is_main():
        remove_tmp(args.out)  # partial files of a killed earlier sweep (the folder is this sweep's)
    dist.barrier()
    if args.num_samples is not None:
        spec = dataclasses.replace(spec, num_samples=args.num_samples)
    run(spec, args.out, device=args.device, progress=not args.no_progress)
    return 0


def _score_images(args):
    """`bcm eval --images`: the protocol of --spec (or the spec defaults), overridden by flags."""
    import dataclasses

    from bcmcore import dist
    from bcmcore.metrics.image_sets import evaluate_images
    from bcmcore.metrics.spec import EvalSpec, load_spec
    from bcmcore.util import remove_tmp

    spec = load_spec(args.spec) if args.spec else EvalSpec(dataset="", models=())
    changes = {"dataset": args.dataset, "ref_split": args.split, "batch_size": args.batch_size}
    features = spec.features
    if args.features == "demo":
        features = dataclasses.replace(features, kind="demo")
    elif args.features:  # an Inception mode of clean-fid
        features = dataclasses.replace(features, kind="inception", mode=args.features)
    elif not args.spec:
        raise UserError("--features: required without --spec (demo, clean or legacy_tensorflow)")
    if args.inception_path:
        features = dataclasses.replace(features, inception_path=args.inception_path)
    changes["features"] = features
    spec = dataclasses.replace(spec, **{k: v for k, v in changes.items() if v is not None})
    metrics = None if args.metrics is None else [m.strip() for m in args.metrics.split(",")]
    _, _, _, device = dist.init(args.device)
    if dist.is_main():
        remove_tmp(args.out)
    dist.barrier()
    row = evaluate_images(
        args.images, args.out, spec, args.ref, args.ref_stats, metrics, args.images_split,
        args.num_samples, device, not args.no_progress,
    )  # fmt: skip
    text = " ".join(
        f"{k.upper() if k in ('fid', 'kid') else k} {row[k]:.6g}"
        for k in ("fid", "precision", "recall", "is", "kid")
        if k in row
    )
    dist.print0(f"[eval] {row['model']} ({row['samples']} images, {row['features']}): {text}")
    dist.print0(f"wrote {args.out}/fid_table.csv, eval_info.json")
    return 0


def edit_rate(argv):
    """Class-editing success rate per guidance weight w (demo digits), outside a sweep."""
    p = parser("bcm edit-rate", edit_rate.__doc__)
    p.add_argument(
        "--network",
        required=True,
        help="network-final.pt (or .safetensors) of an iGCT or EDM (CFG) model",
    )
    p.add_argument(
        "--shards", required=True, help="shard dir of the demo digits (its test split is edited)"
    )
    p.add_argument("--out", required=True, help="CSV file to write: w, edit_success_rate, pairs")
    p.add_argument("--split", default="test")
    p.add_argument("--w", default="1,4,7,13", help="comma-separated guidance weights (w = 1: none)")
    p.add_argument("--limit", type=positive_int, default=200, help="number of source images")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=18,
        help="EDM only: Heun grid points for inversion and sampling",
    )
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    a = p.parse_args(argv)
    from bcmcore.cli._args import parse_times
    from bcmcore.metrics.edit_rate import edit_rate_table

    rows = edit_rate_table(
        a.network, a.shards, a.out, parse_times(a.w, "--w"), a.split, a.limit, a.steps, a.device
    )
    for r in rows:
        rate, n = r["edit_success_rate"], r["pairs"]
        print(f"w={r['w']:g}: {rate:.3f} of {n} edits classified as the target class")
    return 0


COMMANDS = {"eval": evaluate, "edit-rate": edit_rate}
