"""`bcm eval --spec FILE --out DIR`: run an evaluation sweep (distributed when launched on several
ranks)."""

import argparse


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="bcm eval",
        description="FID / precision / recall / inversion-MSE sweep "
        "(tables, plots and sample grids under --out)",
    )
    p.add_argument(
        "--spec", required=True, help="sweep spec (YAML or JSON), see bcmcore/metrics/spec.py"
    )
    p.add_argument("--out", required=True, help="output folder, e.g. results/<ds>/eval")
    p.add_argument(
        "--device", default=None, help="cpu to force the CPU (default: CUDA when available)"
    )
    p.add_argument("--num-samples", type=int, default=None, help="override the spec's num_samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    import dataclasses

    from bcmcore.metrics.spec import load_spec
    from bcmcore.metrics.sweep import run

    spec = load_spec(args.spec)
    if args.num_samples is not None:
        spec = dataclasses.replace(spec, num_samples=args.num_samples)
    run(spec, args.out, device=args.device, progress=not args.no_progress)
    return 0
