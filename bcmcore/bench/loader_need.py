"""`bcm bench loader`: can each preset's data workers feed one GPU? Per training experiment: the
images/s one GPU consumes (FLOPs of the real training step over a dense bf16 peak at a given MFU)
beside the images/s its loader workers decode, and a verdict at a 2x margin.

GPU need. No GPU table exists for this project yet (README, `make gpu-check`), so the need is
estimated: need = peak * mfu / flops_per_image, with flops_per_image = FLOPs of one real training
step (bcmcore.bench.step.step_flops: every loss pass, teacher and student, + backward; counted on
the CPU by torch.utils.flop_counter) / batch. Default peak: an H100's dense bf16 989 TFLOP/s, MFU
40 %. Where a step's cost depends on the step (iGCT's reconstruction pass every `recon_every`
steps), the lighter step is used: the fewer FLOPs per image, the more images the GPU eats.

Loader supply. `data.num_workers` DataLoader processes per GPU, at most cpus_per_task - 1 of them
on their own core (the train stage's cpus_per_task, cluster/slurm/stages.yaml or the dataset's
`launch.train`; the training process keeps one core). Per-worker rate: decoded img/s per CPU second
of one single-threaded process doing all the work (read, CRC-32, PNG decode, flip, batch, uint8 ->
float; bcmcore.bench.loader_rate's natural-photo shards at the preset's resolution), i.e. what one
core delivers: CPU seconds, not wall time, so a busy shared machine does not make the loader look
slower than it is (contention still costs a little: the figure is conservative). With
`data.in_memory` the training process itself gathers from RAM (no workers). Paired experiments
(iGCT) decode two images per sample.
"""

import csv
import time
from pathlib import Path

import torch

from bcmcore.config import load_yaml

PEAK = 989e12  # H100 SXM dense bf16 (bcmcore.bench.step.PEAK_BF16)
MFU = 0.4
BAR = 2.0  # workers must deliver at least twice what the GPU consumes
STAGES = Path(__file__).resolve().parents[2] / "cluster" / "slurm" / "stages.yaml"
COLUMNS = (
    "preset",
    "experiment",
    "res",
    "loader",
    "gflop_per_img",
    "gpu_need_img_s",
    "workers",
    "img_s_per_worker",
    "delivered_img_s",
    "ratio",
    "verdict",
)


def gpu_need(flops_per_image, peak=PEAK, mfu=MFU):
    """Images/s one GPU consumes at `mfu` of `peak` FLOP/s."""
    return peak * mfu / flops_per_image


def delivered(per_worker, num_workers, cpus_per_task, paired=False):
    """Samples/s the workers of one GPU decode: one core each, cpus_per_task - 1 at most."""
    workers = max(1, min(num_workers, cpus_per_task - 1))
    return workers * per_worker / (2 if paired else 1), workers


def verdict(ratio, bar=BAR):
    return f"ok (>= {bar:g}x)" if ratio >= bar else f"STARVES (< {bar:g}x)"


def flops_per_image(name, batch=1):
    """FLOPs of one training step per image for `name` (a bcmcore.bench.step config name,
    "<preset>/<experiment>" or a dict of that form), on the CPU; the lighter of two consecutive
    steps (see above)."""
    from bcmcore.bench.step import bench_config, build_step, step_flops

    c = bench_config(name) if isinstance(name, str) else name
    stepper, batches = build_step(c, batch, torch.device("cpu"))
    steps = (200_000, 200_001) if c["loss"].get("kind") == "igct" else (200_000,)
    return min(step_flops(stepper, batches, s) for s in steps) / batch


def train_cpus(preset):
    """cpus_per_task of the train stage: stages.yaml, else datasets.<ds>.launch.train."""
    from bcmcore import presets

    ds, cfg = presets.load(preset)
    stages = load_yaml(STAGES)
    launch = (cfg["datasets"][ds].get("launch") or {}).get("train") or {}
    return int(launch.get("cpus_per_task", stages["train"]["cpus_per_task"]))


def per_worker_rates(modes, rounds=3, batch=32, batches=8, dir=None):
    """{(res, in_memory): (median, min, max)} decoded img/s per CPU second of one single-threaded
    process, for each mode (res, in_memory) of `modes`, rounds interleaved over the modes. Shards
    (in_memory False): workers=0, so this process reads, checks, decodes, batches and converts as a
    worker would (plus the uint8 -> float of the training process); in memory: the loader's batched
    gather of the decoded split, done by the training process itself (no workers)."""
    import tempfile

    from bcmcore.bench.loader_rate import default_n, write_shards
    from bcmcore.data import DataConfig, make_loader

    rates, threads = {m: [] for m in modes}, torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (and no OpenMP spin in the CPU time)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            shards = {r: write_shards(dir or tmp, r, default_n(r))[0] for r, _ in modes}
            loaders = {}
            for r, mem in modes:
                cfg = DataConfig(shards=str(shards[r]), xflip=True, in_memory=mem, num_workers=0)
                loaders[r, mem] = make_loader(cfg, batch, seed=0)
                next(loaders[r, mem])  # warm-up: open files, first allocation
            for _ in range(rounds):
                for m in modes:
                    t = time.process_time()
                    for _ in range(batches):
                        next(loaders[m])
                    rates[m].append(batch * batches / (time.process_time() - t))
    finally:
        torch.set_num_threads(threads)
    return {m: (sorted(v)[len(v) // 2], min(v), max(v)) for m, v in rates.items()}


def need_rows(experiments, rates, flops=None, batch=1, peak=PEAK, mfu=MFU, bar=BAR, runs=None):
    """One row (dict of COLUMNS) per "<preset>/<experiment>"; rates: {(res, in_memory): (img/s per
    worker, ...)} from per_worker_rates; flops: optional {name: FLOPs per image} (counted when
    missing); runs: optional {name: run config} (default: presets.run_config of the name)."""
    from bcmcore import presets

    rows = []
    for name in experiments:
        preset, exp = name.split("/")
        run = (runs or {}).get(name) or presets.run_config(preset, exp)
        res = run["model"]["net"]["resolution"]
        fpi = (flops or {}).get(name) or flops_per_image(name, batch)
        need = gpu_need(fpi, peak, mfu)
        paired, in_memory = run["data"].get("paired", False), bool(run["data"].get("in_memory"))
        per_worker = rates[res, in_memory][0]
        if in_memory:  # the training process gathers from RAM; no workers are started
            supply, workers = per_worker / (2 if paired else 1), 0
        else:
            supply, workers = delivered(
                per_worker, run["data"].get("num_workers", 2), train_cpus(preset), paired
            )
        rows.append(
            dict(
                preset=preset,
                experiment=exp,
                res=res,
                loader="in memory" if in_memory else "shards",
                gflop_per_img=fpi / 1e9,
                gpu_need_img_s=need,
                workers=workers,
                img_s_per_worker=per_worker,
                delivered_img_s=supply,
                ratio=supply / need,
                verdict=verdict(supply / need, bar),
            )
        )
    return rows


def print_table(rows, file=None):
    """The rows as a markdown table (the form docs/loader.md and the README quote)."""
    fmt = {"gflop_per_img": "{:.1f}", "ratio": "{:.1f}x"}
    print("| " + " | ".join(COLUMNS) + " |", file=file)
    print("|" + "---|" * len(COLUMNS), file=file)
    for r in rows:
        cells = [
            fmt.get(k, "{:.0f}" if isinstance(r[k], float) else "{}").format(r[k]) for k in COLUMNS
        ]
        print("| " + " | ".join(cells) + " |", file=file, flush=True)


def write_csv(rows, path):
    from bcmcore.util import atomic_path

    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)


def read_flops(path):
    """{<preset>/<experiment>: FLOPs per image} from an earlier --out CSV (skips re-counting)."""
    with open(path, newline="") as f:
        return {
            f"{r['preset']}/{r['experiment']}": float(r["gflop_per_img"]) * 1e9
            for r in csv.DictReader(f)
        }
