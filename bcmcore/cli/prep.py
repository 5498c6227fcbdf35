"""`bcm prep <format> --out DIR [options]`: raw dataset -> WebDataset shards (data_prep's
converters, the bcmcore.shards writer).

The formats and their flags are the FORMATS tables of data_prep's modules (data_prep/__init__.py):
a new format appears here by itself.
"""

from bcmcore.cli._args import nonneg_int, parser, positive_int

KINDS = {"count": nonneg_int, "positive": positive_int, "text": str}  # a Format option's kind


def _parser():
    from data_prep import formats

    p = parser("bcm prep", "Raw dataset -> WebDataset shards + manifest.json.")
    sub = p.add_subparsers(dest="format", required=True)
    for name, f in formats().items():
        s = sub.add_parser(name, help=f.help)
        s.add_argument("--out", required=True, help="output directory (results/<ds>/shards)")
        s.add_argument(
            "--shard-size", type=positive_int, default=5000, help="samples per shard (default 5000)"
        )
        s.add_argument(
            "--workers", type=positive_int, default=None, help="processes (default: all CPU cores)"
        )
        if f.src:
            s.add_argument("--src", required=True, help=f.src)
        if f.resolution:
            s.add_argument(
                "--resolution",
                type=positive_int,
                default=f.resolution,
                help=f"pixels (default {f.resolution})",
            )
        for flag, kind, default, help in f.options:
            s.add_argument(flag, type=KINDS[kind], default=default, help=help)
    return p


def prep(argv):
    """Convert a raw dataset into WebDataset shards + manifest.json."""
    from bcmcore.shards import write_dataset

    args = _parser().parse_args(argv)
    from data_prep import formats

    splits, meta, totals = formats()[args.format].splits(args, args.shard_size)
    meta["options"] = {k: v for k, v in vars(args).items() if k not in ("out", "workers")}
    man = write_dataset(args.out, splits, meta, workers=args.workers, totals=totals)
    counts = ", ".join(f"{s} {v['count']}" for s, v in man["splits"].items())
    print(f"wrote {args.out}/manifest.json ({meta['dataset']}: {counts})")
    return 0


COMMANDS = {"prep": prep}
