"""`bcm bench train | ddp | data`: how fast one training step is, how it scales over processes, and
the data loader's throughput (bcmcore.bench, bcmcore.data_bench)."""

import json

from bcmcore.cli._args import parser
from bcmcore.config import UserError


def bench(argv):
    from bcmcore.bench import CONFIGS

    ap = parser("bcm bench", "Training-step, DDP-scaling and data-loader benchmarks.")
    sub = ap.add_subparsers(dest="what", required=True)
    tr = sub.add_parser("train", help="img/s, sec/step (and MFU on CUDA) of the training step")
    tr.add_argument(
        "--config",
        help=f"one of {', '.join(CONFIGS)}, <preset>/<experiment> or digits/<experiment> (the "
        "demo's); default tiny",
    )
    tr.add_argument(
        "--vs",
        nargs=2,
        metavar=("A", "B"),
        help="time two sides interleaved (A B, B A, ...) in one worker process each and print "
        "the B/A ratio of sec/step with its spread; a side is CONFIG[@OVERRIDE]..., overrides "
        "threads=N, batch=N, net.K=V, model.K=V, loss.K=V, train.K=V or a variant token "
        "(bcmcore/bench_vs.py), e.g. digits/ict@threads=1",
    )
    tr.add_argument("--rounds", type=int, default=7, help="--vs: rounds of --steps per side")
    tr.add_argument(
        "--baseline-tree",
        metavar="PATH",
        help="run side A with the bcmcore of this checkout (e.g. `git worktree add /tmp/base "
        "<rev>`): one config across two code versions; without --vs both sides are --config",
    )
    tr.add_argument(
        "--batch", type=int, help="per-process batch (default: the config's GPU or CPU batch)"
    )
    tr.add_argument("--steps", type=int, default=10)
    tr.add_argument("--warmup", type=int, default=3)
    tr.add_argument(
        "--variants",
        help="comma list of variants, each tokens joined by '+': fp32 (TF32 matmuls, the train "
        "default), bf16, notf32, compile, channels_last; e.g. fp32,fp32+notf32,bf16+compile",
    )
    tr.add_argument("--device", choices=["cpu", "cuda"], default=None)
    tr.add_argument("--out", help="also write the rows as JSON here")
    dd = sub.add_parser("ddp", help="2-process vs 1-process step time on CPU (gloo)")
    dd.add_argument("--config", default="tiny")
    dd.add_argument("--batch", type=int, help="per-process batch")
    dd.add_argument("--steps", type=int, default=20)
    dd.add_argument("--out")
    da = sub.add_parser("data", help="shard loader vs in-memory decoded images/s")
    da.add_argument("--res", default="32,64", help="resolutions (default 32,64)")
    da.add_argument("--workers", default="0,1,2", help="DataLoader worker counts (default 0,1,2)")
    da.add_argument("--n", type=int, default=4096, help="images per resolution")
    da.add_argument("--batch", type=int, default=128, help="batch per rank")
    da.add_argument("--batches", type=int, default=20, help="timed batches per row")
    da.add_argument("--dir", default=None, help="where to write the shards (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.what == "data":
        from bcmcore.data_bench import benchmark

        res = [int(r) for r in args.res.split(",")]
        workers = [int(w) for w in args.workers.split(",")]
        benchmark(res, workers, args.n, args.batch, args.batches, args.dir)
        return 0
    import torch

    from bcmcore.bench import bench_ddp, bench_train

    device = torch.device(
        getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if args.what == "train" and (args.vs or args.baseline_tree):
        from bcmcore.bench_vs import compare

        if (args.vs and args.config) or args.variants:
            raise UserError(
                "--vs / --baseline-tree: configs and variant tokens go in the side specs (e.g. "
                "--vs tiny tiny@compile), not in --config (with --vs) or --variants"
            )
        a, b = args.vs or [args.config or "tiny"] * 2
        rows = compare(
            a, b, device, args.batch, args.steps, args.warmup, args.rounds, args.baseline_tree
        )
    elif args.what == "train":
        variants = (
            args.variants.split(",")
            if args.variants
            else (None if device.type == "cuda" else ["fp32", "channels_last"])
        )
        rows = bench_train(
            args.config or "tiny", device, args.batch, args.steps, args.warmup, variants
        )
    else:
        rows = [bench_ddp(args.config, args.batch, args.steps)]
    if args.out:
        from bcmcore.util import atomic_write_text

        atomic_write_text(args.out, json.dumps(rows, indent=1) + "\n")
    return 0


COMMANDS = {"bench": bench}
