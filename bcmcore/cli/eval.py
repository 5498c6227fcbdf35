"""`bcm eval --spec FILE --out DIR` (an evaluation sweep, distributed when launched on several
ranks) and `bcm edit-rate` (class-editing success rate per w outside a sweep)."""

from bcmcore.cli._args import parser, positive_int


def evaluate(argv):
    """Run an evaluation sweep: FID, precision/recall, IS, KID, inversion MSE, guidance."""
    p = parser(
        "bcm eval",
        "FID / precision / recall / IS / KID / inversion MSE, PSNR, SSIM, LPIPS sweep "
        "(tables, plots and sample grids under --out)",
    )
    p.add_argument(
        "--spec", required=True, help="sweep spec (YAML or JSON), see bcmcore/metrics/spec.py"
    )
    p.add_argument("--out", required=True, help="output folder, e.g. results/<ds>/eval")
    p.add_argument(
        "--device", default=None, help="cpu to force the CPU (default: CUDA when available)"
    )
    p.add_argument(
        "--num-samples", type=positive_int, default=None, help="override the spec's num_samples"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

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


def edit_rate(argv):
    """Class-editing success rate per guidance weight w (demo digits), outside a sweep."""
    p = parser("bcm edit-rate", edit_rate.__doc__)
    p.add_argument(
        "--network", required=True, help="network-final.pt of an iGCT or EDM (CFG) model"
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
