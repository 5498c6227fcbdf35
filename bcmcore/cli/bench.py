"""`bcm bench train | ddp | data | loader`: how fast one training step is, how it scales over
processes, the data loader's throughput and what a GPU needs of it (bcmcore/bench/); one handler per
subcommand."""

import json

from bcmcore.cli._args import nonneg_int, parser, positive_float, positive_int
from bcmcore.config import UserError


def bench(argv):
    """Benchmark the training step, DDP scaling and the data loader."""
    from bcmcore.bench.step import CONFIGS

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
        "(bcmcore/bench/vs.py), e.g. digits/ict@threads=1",
    )
    tr.add_argument(
        "--rounds", type=positive_int, default=7, help="--vs: rounds of --steps per side"
    )
    tr.add_argument(
        "--baseline-tree",
        metavar="PATH",
        help="run side A with the bcmcore of this checkout (e.g. `git worktree add /tmp/base "
        "<rev>`): one config across two code versions; without --vs both sides are --config",
    )
    tr.add_argument(
        "--batch",
        type=positive_int,
        help="per-process batch (default: the config's GPU or CPU batch)",
    )
    tr.add_argument("--steps", type=positive_int, default=10)
    tr.add_argument("--warmup", type=nonneg_int, default=3)
    tr.add_argument(
        "--variants",
        help="comma list of variants, each tokens joined by '+': fp32 (TF32 matmuls, the train "
        "default), bf16, notf32, compile, channels_last; e.g. fp32,fp32+notf32,bf16+compile",
    )
    tr.add_argument("--device", choices=["cpu", "cuda"], default=None)
    tr.add_argument("--out", help="also write the rows as JSON here")
    dd = sub.add_parser("ddp", help="2-process vs 1-process step time on CPU (gloo)")
    dd.add_argument("--config", default="tiny")
    dd.add_argument("--batch", type=positive_int, help="per-process batch")
    dd.add_argument("--steps", type=positive_int, default=20)
    dd.add_argument("--out")
    da = sub.add_parser("data", help="shard loader vs in-memory decoded images/s")
    da.add_argument("--res", default="32,64,256", help="resolutions (default 32,64,256)")
    da.add_argument("--workers", default="0,1,2", help="DataLoader worker counts (default 0,1,2)")
    da.add_argument(
        "--n",
        type=positive_int,
        help="images per resolution (default 4096 up to 64 px, 256 at 256 px)",
    )
    da.add_argument(
        "--content",
        choices=["photo", "smooth", "noise"],
        default="photo",
        help="image content: crops of real photos (default), smooth noise, or uniform noise",
    )
    da.add_argument("--batch", type=positive_int, default=128, help="batch per rank")
    da.add_argument("--batches", type=positive_int, default=20, help="timed batches per row")
    da.add_argument("--dir", default=None, help="where to write the shards (default: a temp dir)")
    lo = sub.add_parser(
        "loader",
        help="per preset experiment: img/s one GPU consumes vs what its loader workers supply",
    )
    lo.add_argument(
        "--experiments",
        help="comma list of <preset>/<experiment> (default: every trained experiment of "
        "cifar10, imagenet64, ffhq64, lsun256)",
    )
    lo.add_argument(
        "--peak", type=positive_float, default=989e12, help="GPU FLOP/s (default H100 bf16)"
    )
    lo.add_argument("--mfu", type=positive_float, default=0.4, help="model FLOPs utilisation (0.4)")
    lo.add_argument(
        "--bar", type=positive_float, default=2.0, help="required supply/need ratio (2)"
    )
    lo.add_argument(
        "--batch", type=positive_int, default=1, help="batch of the FLOP-counted CPU step"
    )
    lo.add_argument("--rounds", type=positive_int, default=3, help="interleaved loader-rate rounds")
    lo.add_argument("--flops-from", help="reuse the FLOPs of an earlier --out CSV")
    lo.add_argument("--out", help="also write the rows as CSV here (e.g. docs/loader.csv)")
    args = ap.parse_args(argv)
    uu = sub.add_parser(
        "u-use",
        help="how much a BCM uses u: rel_L per training state and the demo sweep (docs/u_use.md)",
    )
    uu.add_argument("runs", nargs="+", help="bcm train run directories")
    uu.add_argument("--shards", required=True, help="the demo's shard folder")
    uu.add_argument("--out", required=True, help="output folder")
    uu.add_argument("--no-sweep", action="store_true", help="rel_L rows only")
    return HANDLERS[args.what](args)


def _device(args):
    import torch

    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _write_rows(rows, out):
    if out:
        from bcmcore.util import atomic_write_text

        atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
    return 0


def _train(args):
    if args.vs or args.baseline_tree:
        return _vs(args)
    from bcmcore.bench.step import bench_train

    device = _device(args)
    variants = (
        args.variants.split(",")
        if args.variants
        else (None if device.type == "cuda" else ["fp32", "channels_last"])
    )
    rows = bench_train(args.config or "tiny", device, args.batch, args.steps, args.warmup, variants)
    return _write_rows(rows, args.out)


def _vs(args):
    from bcmcore.bench.vs import compare

    if (args.vs and args.config) or args.variants:
        raise UserError(
            "--vs / --baseline-tree: configs and variant tokens go in the side specs (e.g. "
            "--vs tiny tiny@compile), not in --config (with --vs) or --variants"
        )
    a, b = args.vs or [args.config or "tiny"] * 2
    rows = compare(
        a, b, _device(args), args.batch, args.steps, args.warmup, args.rounds, args.baseline_tree
    )
    return _write_rows(rows, args.out)


def _ddp(args):
    from bcmcore.bench.step import bench_ddp

    return _write_rows([bench_ddp(args.config, args.batch, args.steps)], args.out)


def _data(args):
    from bcmcore.bench.loader_rate import benchmark

    res = [int(r) for r in args.res.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    benchmark(res, workers, args.n, args.batch, args.batches, args.dir, args.content)
    return 0


def _loader(args):
    from bcmcore import presets
    from bcmcore.bench import loader_need

    names = (
        args.experiments.split(",")
        if args.experiments
        else [f"{p}/{e}" for p in presets.PRESETS for e in presets.experiments(p)]
    )
    for n in names:
        if n.count("/") != 1:
            raise UserError(f"--experiments: expected <preset>/<experiment>, got {n!r}")
    for key in ("peak", "mfu", "bar"):
        if not getattr(args, key) > 0:
            raise UserError(f"--{key}: expected a positive number, got {getattr(args, key)}")
    for key in ("batch", "rounds"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key}: expected an integer >= 1, got {getattr(args, key)}")
    flops = loader_need.read_flops(args.flops_from) if args.flops_from else {}
    runs = {n: presets.run_config(*n.split("/")) for n in names}  # unknown names stop here
    # every resolution from shards (the workers' rate), and in memory where an experiment is
    modes = {(r["model"]["net"]["resolution"], False) for r in runs.values()}
    modes |= {
        (r["model"]["net"]["resolution"], True) for r in runs.values() if r["data"].get("in_memory")
    }
    rates = loader_need.per_worker_rates(sorted(modes), rounds=args.rounds)
    for (r, mem), (med, lo, hi) in rates.items():
        label = "in memory (gathered by the training process)" if mem else "per worker, shards"
        print(f"  {r}x{r}: {med:.0f} img/s {label} (min {lo:.0f}, max {hi:.0f} of {args.rounds})")
    rows = loader_need.need_rows(
        names, rates, flops, args.batch, args.peak, args.mfu, args.bar, runs
    )
    loader_need.print_table(rows)
    print(
        f"(GPU: {args.peak / 1e12:.0f} TFLOP/s at {args.mfu:.0%} MFU; workers: data.num_workers, "
        "at most cpus_per_task - 1; paired experiments decode 2 images per sample)"
    )
    if args.out:
        loader_need.write_csv(rows, args.out)
    return 0


def _u_use(args):
    import torch

    from bcmcore.bench.u_study import study

    torch.set_num_threads(1)  # the figures in docs/u_use.md were measured on one thread
    study(args.runs, args.shards, args.out, sweeps=not args.no_sweep)
    return 0


HANDLERS = {"train": _train, "ddp": _ddp, "data": _data, "loader": _loader, "u-use": _u_use}
COMMANDS = {"bench": bench}
