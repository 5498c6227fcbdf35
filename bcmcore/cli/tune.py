"""`bcm tune --spec FILE --out DIR`: choose the sweep's sampler times by measurement
(bcmcore/tune.py), optionally with the per-(t, u) inversion probe (bcmcore/metrics/probe.py)."""

from bcmcore.cli._args import nonneg_int, parser, positive_int


def tune(argv):
    """Choose a sweep's sampler times by measurement (FID on held-out seeds)."""
    p = parser(
        "bcm tune",
        "search the time steps of every ancestral / zigzag / combined / multistep sampler of the "
        "spec's models (FID for images, energy distance for 2-D data) on seeds disjoint from the "
        "sweep's; writes tune_table.csv, tuned.json and tuned_spec.json (the spec with the chosen "
        "times, for `bcm eval --spec`)",
    )
    p.add_argument("--spec", required=True, help="sweep spec (YAML or JSON) giving the start times")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", action="append", default=None, help="tune only this model (repeat)")
    p.add_argument(
        "--budget", type=positive_int, default=30, help="schedules scored per sampler (30)"
    )
    p.add_argument(
        "--seed-offset",
        type=nonneg_int,
        default=None,
        help="tuning seeds start at the spec's seed + this (default 1000000)",
    )
    p.add_argument(
        "--num-samples", type=positive_int, default=None, help="samples per score (spec's)"
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="also write probe-<model>.csv: the per-(t, u) inversion probe of each bcm model on "
        "the spec's inversion split",
    )
    p.add_argument("--device", default=None, help="cpu to force the CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    from bcmcore import tune as lib
    from bcmcore.config import UserError
    from bcmcore.metrics.spec import load_spec

    if args.budget < 1 or (args.num_samples is not None and args.num_samples < 2):
        raise UserError("--budget must be >= 1 and --num-samples >= 2")
    spec = load_spec(args.spec)
    offset = lib.SEED_OFFSET if args.seed_offset is None else args.seed_offset
    if args.probe:
        lib.probe_spec(spec, args.out, args.model, device=args.device)
    lib.tune_spec(
        spec,
        args.out,
        args.model,
        args.budget,
        offset,
        args.num_samples,
        device=args.device,
        progress=not args.no_progress,
    )
    return 0


COMMANDS = {"tune": tune}
