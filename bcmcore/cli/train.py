"""`bcm train --run-dir DIR`: train one stage from DIR/config.json, resuming automatically."""

from bcmcore.cli._args import parser


def train(argv):
    """Train one stage from RUN_DIR/config.json, resuming automatically."""
    ap = parser("bcm train", __doc__)
    ap.add_argument(
        "--run-dir",
        required=True,
        help="run directory holding config.json (written by the workflow)",
    )
    ap.add_argument(
        "--device", choices=["cpu"], default=None, help="force CPU (default: CUDA if available)"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    if args.dry_run:
        import json

        from bcmcore.train.identity import load_run_config

        print(json.dumps(load_run_config(args.run_dir).as_dict(), indent=2))
        return 0
    from bcmcore import dist
    from bcmcore.train.loop import training_loop

    try:
        training_loop(args.run_dir, device=args.device)
    finally:
        dist.shutdown()
    return 0


COMMANDS = {"train": train}
