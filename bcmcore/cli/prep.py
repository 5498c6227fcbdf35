"""`bcm prep <format> --out DIR [options]`: raw dataset -> WebDataset shards (data_prep's
converters, the bcmcore.shards writer).

Formats: cifar10, imagenet-npz, imagenet-folder, ffhq, lsun-bedroom, folder, digits (the offline
demo), gmm2d.
"""

from bcmcore.cli._args import nonneg_int, parser, positive_int
from bcmcore.config import UserError


def _parser():
    p = parser("bcm prep", "Raw dataset -> WebDataset shards + manifest.json.")
    sub = p.add_subparsers(dest="format", required=True)

    def add(name, help, src=None, resolution=None):
        s = sub.add_parser(name, help=help)
        s.add_argument("--out", required=True, help="output directory (results/<ds>/shards)")
        s.add_argument(
            "--shard-size", type=positive_int, default=5000, help="samples per shard (default 5000)"
        )
        s.add_argument(
            "--workers", type=positive_int, default=None, help="processes (default: all CPU cores)"
        )
        if src:
            s.add_argument("--src", required=True, help=src)
        if resolution:
            s.add_argument(
                "--resolution",
                type=positive_int,
                default=resolution,
                help=f"pixels (default {resolution})",
            )
        return s

    add("cifar10", "CIFAR-10 python tarball", src="path of cifar-10-python.tar.gz (read in place)")
    add(
        "imagenet-npz",
        "downsampled ImageNet npz files",
        resolution=64,
        src="directory with Imagenet64_train_part*.npz and Imagenet64_val_data.npz",
    )
    add(
        "imagenet-folder",
        "ILSVRC-style JPEG folders, ADM centre crop",
        resolution=64,
        src="directory with train/<wnid>/*.JPEG (and optionally val/<wnid>/*)",
    )
    for name, res, test, what in (
        ("ffhq", 64, 1000, "FFHQ images (BCM: first 69,000 train, last 1,000 test)"),
        ("lsun-bedroom", 256, 0, "LSUN Bedroom exported to a folder of images"),
        ("folder", 64, 0, "any flat folder of images (unlabelled)"),
    ):
        s = add(
            name,
            what,
            src="image folder (searched recursively, files sorted by path)",
            resolution=res,
        )
        s.add_argument(
            "--test-count",
            type=nonneg_int,
            default=test,
            help=f"last N sorted files form the test split (default {test})",
        )
    # 8: the digits' own pixels, as the demo uses them (16 upscales them bilinearly)
    s = add("digits", "scikit-learn's handwritten digits, the offline demo set", resolution=8)
    s.add_argument(
        "--test-count", type=nonneg_int, default=300, help="seeded test split size (default 300)"
    )
    s.add_argument("--seed", type=nonneg_int, default=0)
    s = add("gmm2d", "2-D Gaussian-mixture toy data (bcmcore.toy.DEMO_GMM unless --params)")
    s.add_argument("--n-train", type=positive_int, default=65536)
    s.add_argument("--n-test", type=nonneg_int, default=8192)
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument(
        "--params", default=None, help="JSON file {means, stds, weights} (default DEMO_GMM)"
    )
    return p


def _splits(args):
    from data_prep import arrays, folders

    if args.shard_size < 1:
        raise UserError(f"--shard-size: expected a positive integer, got {args.shard_size}")
    if getattr(args, "resolution", 1) < 1:
        raise UserError(f"--resolution: expected a positive integer, got {args.resolution}")
    f, n = args.format, args.shard_size
    if f == "cifar10":
        return arrays.cifar10_splits(args.src, n)
    if f == "imagenet-npz":
        return arrays.imagenet_npz_splits(args.src, args.resolution, n)
    if f == "imagenet-folder":
        return folders.imagenet_folder_splits(args.src, args.resolution, n)
    if f in ("ffhq", "lsun-bedroom", "folder"):
        name = {
            "ffhq": f"ffhq{args.resolution}",
            "lsun-bedroom": f"lsun_bedroom{args.resolution}",
        }.get(f, "folder")
        return folders.folder_splits(args.src, args.resolution, n, args.test_count, name)
    if f == "digits":
        return arrays.digits_splits(n, args.resolution, args.test_count, args.seed)
    return arrays.gmm2d_splits(n, args.n_train, args.n_test, args.seed, args.params)


def prep(argv):
    """Convert a raw dataset into WebDataset shards + manifest.json."""
    from bcmcore.shards import write_dataset

    args = _parser().parse_args(argv)
    splits, meta, totals = _splits(args)
    meta["options"] = {k: v for k, v in vars(args).items() if k not in ("out", "workers")}
    man = write_dataset(args.out, splits, meta, workers=args.workers, totals=totals)
    counts = ", ".join(f"{s} {v['count']}" for s, v in man["splits"].items())
    print(f"wrote {args.out}/manifest.json ({meta['dataset']}: {counts})")
    return 0


COMMANDS = {"prep": prep}
