"""`bcm check gpu [--cpu]`: the one-shot GPU acceptance check (bcmcore/bench/gpu_check.py), one
table."""

from bcmcore.cli._args import parser, positive_float


def check(argv):
    """Acceptance checks of a machine (bcm check gpu: one table)."""
    ap = parser("bcm check", "Acceptance checks of a machine.")
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gpu", help="tests, resume, sampling, eval and training throughput; 1 table")
    g.add_argument("--cpu", action="store_true", help="tiny networks on the CPU (the suite's run)")
    g.add_argument("--out", default="results/gpu-check", help="where gpu-check.{md,json} go")
    g.add_argument(
        "--budget-s",
        type=positive_float,
        default=420,
        help="seconds for all items (compiled rows last)",
    )
    g.add_argument("--no-tests", action="store_true", help="skip the gpu-marked pytest run")
    args = ap.parse_args(argv)
    from bcmcore.bench.gpu_check import run

    run(cpu=args.cpu, out_dir=args.out, budget_s=args.budget_s, tests=not args.no_tests)
    return 0


COMMANDS = {"check": check}
