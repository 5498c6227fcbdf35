"""How fast one training step is, and how it scales over processes (`bcm bench train | ddp`).

train  img/s and sec/step of the real training step (train/step.py: loss passes, backward, RAdam,
       EMA) for a named config, with and without bf16 autocast / torch.compile / channels_last where
       they apply; MFU on CUDA (FLOPs counted by torch.utils.flop_counter, bf16 dense peak of the
       GPU as denominator).
ddp    2 gloo CPU processes vs 1, same per-process batch: step-time and per-sample-time ratios.
data   the data loader's own benchmark: bcmcore.bench.loader_rate.
"""

import json
import os
import time

import torch

from bcmcore.config import UserError, from_dict

# Named configs: model + loss + per-GPU batch (CPU runs use cpu_batch so a 2-core box finishes).
# Image configs are experiments of the workflow's presets (bcmcore.presets), so the benchmarked net
# is the one the preset trains; any "<preset>/<experiment>" works too (per-GPU batch 64, CPU 2), and
# "digits/<experiment>" is the demo's (its own train.batch: the demo trains on CPUs at that batch).
CONFIGS = {
    "tiny": dict(
        model={
            "kind": "bcm",
            "net": {
                "arch": "mlp",
                "data_channels": 2,
                "channels": 128,
                "num_blocks": 4,
                "two_time": True,
            },
        },
        loss={"kind": "bct"},
        shape=(2,),
        batch=4096,
        cpu_batch=512,
    ),
    "ncsnpp-cifar": dict(preset="cifar10/bcm_scratch", batch=128, cpu_batch=4),
    "adm-64": dict(preset="imagenet64/bcm_ft", batch=64, cpu_batch=2),
}


def bench_config(name):
    """{model, loss, shape, batch, cpu_batch} of a named config or of "<preset>/<experiment>"
    (digits/<experiment>: the demo's)."""
    from bcmcore import presets

    c = dict(CONFIGS.get(name) or {})
    if not c and name.count("/") == 1:
        c = dict(preset=name, batch=64, cpu_batch=2)
    if not c:
        raise UserError(
            f"--config: unknown config {name!r} (known: {', '.join(CONFIGS)}, or "
            f"<preset>/<experiment> with a preset of {', '.join((*presets.PRESETS, presets.DEMO))})"
        )
    if "preset" in c:
        preset, exp = c["preset"].split("/")
        run = presets.run_config(preset, exp)
        net = run["model"]["net"]
        c.update(model=run["model"], loss=run["loss"])
        c["shape"] = (net["data_channels"], net["resolution"], net["resolution"])
        if preset == presets.DEMO:
            c["batch"] = c["cpu_batch"] = run["train"]["batch"]
    return c


# Dense bf16 tensor-core peak (FLOP/s) by device-name substring; MFU is left out for other devices.
PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "V100": 125e12,
}


def build_step(name, batch, device, **train_keys):
    """A Stepper for `name` (a CONFIGS key, or a dict of the same form); train_keys are TrainConfig
    device keys (bf16, tf32, compile, channels_last, ...), applied as training applies them."""
    from bcmcore.losses import build_loss
    from bcmcore.nets import ModelConfig, build_model
    from bcmcore.train.config import TrainConfig
    from bcmcore.train.step import Stepper

    c = bench_config(name) if isinstance(name, str) else name
    model_cfg = from_dict(ModelConfig, c["model"], "model")
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device).train()
    t = TrainConfig(total_steps=400_000, batch=batch, **train_keys)
    stepper = Stepper(
        model,
        build_loss(c["loss"], model_cfg),
        t,
        device,
        conditional=model_cfg.net.num_classes > 0,
    )
    x = torch.rand(batch, *c["shape"], device=device) * 2 - 1
    y = torch.randint(0, max(model_cfg.net.num_classes, 1), (batch,), device=device)

    batch_dict = {"x": x, "y": y}
    if c["loss"]["kind"] == "igct":  # paired source images
        batch_dict["x_src"] = torch.rand_like(x) * 2 - 1

    def batches():
        while True:
            yield batch_dict

    return stepper, batches()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(stepper, batches, steps, warmup, device):
    """Seconds per optimizer step (mean over `steps` after `warmup`)."""
    for i in range(warmup):
        stepper.backward(batches, 200_000 + i)
        stepper.update()
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        stepper.backward(
            batches, 200_000 + i
        )  # mid-curriculum: the grid size does not matter for speed
        stepper.update()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def step_flops(stepper, batches, step=200_000):
    """FLOPs of one training step's gradients (every loss pass + backward) at `step`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        stepper.backward(batches, step)
    return counter.get_total_flops()


def variant_keys(variant):
    """'bf16+compile' -> TrainConfig device keys; tokens fp32 (no autocast), bf16, notf32 (IEEE fp32
    matmuls), compile, channels_last."""
    tokens = set(variant.split("+"))
    unknown = tokens - {"fp32", "bf16", "notf32", "compile", "channels_last"}
    if unknown:
        raise UserError(f"--variants: unknown token(s) {', '.join(sorted(unknown))} in {variant!r}")
    return dict(
        bf16="bf16" in tokens,
        tf32="notf32" not in tokens,
        compile="compile" in tokens,
        channels_last="channels_last" in tokens,
    )


def bench_train(
    name, device, batch=None, steps=10, warmup=3, variants=None, config=None, echo=True
):
    """Rows {config, variant, batch, sec_per_step, img_per_s, peak_gb, mfu} for the variants that
    apply here. `config`: a dict like a CONFIGS entry, benchmarked under `name` instead."""
    c = config or bench_config(name)
    image = len(c["shape"]) == 3
    cuda = device.type == "cuda"
    batch = batch or c["batch" if cuda else "cpu_batch"]
    wanted = variants or ["fp32", "bf16", "compile", "bf16+compile", "channels_last"]
    rows, flops = [], None  # FLOPs per step do not depend on the variant: counted once, uncompiled
    for v in wanted:
        opts = variant_keys(v)
        if (opts["bf16"] and not cuda) or (opts["channels_last"] and not image):
            continue  # autocast runs on CUDA only (train.bf16); channels_last is for images
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        stepper, batches = build_step(c, batch, device, **opts)
        sec = time_steps(stepper, batches, steps, warmup, device)
        row = {
            "config": name,
            "variant": v,
            "device": str(device),
            "batch": batch,
            "sec_per_step": sec,
            "img_per_s": batch / sec,
        }
        if cuda:
            row["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        peak = next(
            (p for k, p in PEAK_BF16.items() if cuda and k in torch.cuda.get_device_name(device)),
            None,
        )
        if peak and flops is None and not opts["compile"]:
            flops = step_flops(stepper, batches)
        if peak and flops is not None:
            row["tflops_per_step"] = flops / 1e12
            row["mfu"] = flops / sec / peak  # against the dense bf16 peak, whatever the variant
        rows.append(row)
        if echo:
            print(json.dumps(row), flush=True)
        del stepper, batches
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _ddp_worker(rank, world, port, name, batch, steps, warmup, out):
    from bcmcore import dist

    os.environ.update(dist.local_env(rank, world, port))
    _, _, _, device = dist.init(device="cpu")
    stepper, batches = build_step(name, batch * world, device)
    sec = time_steps(stepper, batches, steps, warmup, device)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"sec_per_step": sec, "threads": torch.get_num_threads()}, f)
    dist.shutdown()


def bench_ddp(name="tiny", batch=None, steps=20, warmup=3, world=2):
    """CPU: per-process batch b on `world` gloo processes vs one process; ideal step-time ratio 1.0
    (given enough cores), ideal per-sample-time ratio 1/world."""
    import tempfile

    import torch.multiprocessing as mp

    from bcmcore.dist import free_port

    batch = batch or bench_config(name)["cpu_batch"]
    times = {}
    for w in (1, world):
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            mp.spawn(
                _ddp_worker, args=(w, port, name, batch, steps, warmup, out), nprocs=w, join=True
            )
            with open(out) as f:
                times[w] = json.load(f)
    t1, tw = times[1]["sec_per_step"], times[world]["sec_per_step"]
    row = {
        "config": name,
        "batch_per_process": batch,
        "sec_per_step_1": t1,
        f"sec_per_step_{world}": tw,
        "threads_per_process": {w: r["threads"] for w, r in times.items()},
        "cpu_count": os.cpu_count(),
        "step_time_ratio": tw / t1,
        "per_sample_time_ratio": tw / (world * t1),
    }
    print(json.dumps(row), flush=True)
    return row
