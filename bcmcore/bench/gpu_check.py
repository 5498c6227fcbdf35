"""`bcm check gpu` (`make gpu-check`): the one-shot acceptance check of a GPU machine, one table.

Runs, most important first, each item in its own try block (a failure is a FAIL row, and the exit
code is non-zero; a CUDA error stops the check at once, since the context is gone after one), every
item after the first only while the time budget (440 s, so the whole check stays under 8 minutes)
has room for it:
  1. the `gpu`-marked tests (pytest -m gpu tests/);
  2. bitwise resume on the device with train.deterministic: a `bcm train` SIGKILLed mid-way and
     resumed vs an uninterrupted one;
  3. 1-GPU training throughput (img/s, peak GB, MFU) of the presets' networks (NCSN++-CIFAR iCT,
     BCT, iGCT; ADM-64 BCM fine-tuning) with bf16 and TF32 on and off;
  4. 1-step and 2-step sampling throughput of the preset networks (random weights);
  5. a 1-GPU `bcm eval` sweep on random weights (toy data, raw features: no staged Inception file);
  6. resume again without train.deterministic (information: is the default bitwise too?);
  7. the same training rows with torch.compile, each in a child process killed when time is up.
`--cpu` runs the same code with tiny networks on the CPU, so the test suite keeps it working.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bcmcore.bench.gpu_items import child_env, eval_check, gpu_tests, resume_check
from bcmcore.config import UserError

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/, workflow/config/)
# (name, preset, experiment, per-GPU batch): the presets set the global batch; per GPU it is
# CIFAR-10 1024 / 8 GPUs and ImageNet-64 4096 / 64 GPUs, as the papers trained.
NETS = (
    ("ncsnpp-cifar ict", "cifar10", "ict", 128),
    ("ncsnpp-cifar bct", "cifar10", "bcm_scratch", 128),
    ("ncsnpp-cifar igct", "cifar10", "igct", 128),
    ("adm-64 bcm-ft", "imagenet64", "bcm_ft", 64),
)
VARIANTS = ("fp32", "fp32+notf32", "bf16")  # fp32: TF32 on (the train default); notf32: IEEE
COMPILED = ("bf16+compile",)
CPU_VARIANTS = ("fp32", "fp32+channels_last")  # autocast is CUDA-only; TF32 flags do not apply
TINY_NET = dict(  # 32 channels: ADM's GroupNorm has 32 groups
    channels=32, ch_mult=[1, 2], num_blocks=1, resolution=8, attn_res=[4], head_channels=32
)
COLUMNS = ("check", "item", "variant", "batch", "img_per_s", "peak_gb", "mfu", "result")


class CheckFailed(UserError):
    """Some item failed; the table says which."""


def preset_config(preset, experiment, tiny=False):
    """{model, loss, shape} of one preset experiment (bcmcore.presets: what the workflow trains);
    tiny: the same architecture at 8x8 with 32 channels."""
    from bcmcore import presets

    run = presets.run_config(preset, experiment)
    model = run["model"]
    if tiny:
        model["net"] = {**model["net"], **TINY_NET}
        model["net"]["num_classes"] = min(model["net"].get("num_classes", 0), 10)
    net = model["net"]
    shape = (net.get("data_channels", 3), net["resolution"], net["resolution"])
    return {"model": model, "loss": dict(run["loss"]), "shape": shape}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_cuda_error(e):
    accel = getattr(torch, "AcceleratorError", ())
    marks = ("CUDA error", "cuDNN error", "CUBLAS_STATUS", "NCCL error")
    return bool(accel and isinstance(e, accel)) or any(m in str(e) for m in marks)


# ----------------------------------------------------------------------------------- the items


def _sampling_seconds(model, recipe, shape, n, y, device, reps):
    from bcmcore import sampling

    def once():
        rng = sampling.SeededRNG(range(n), device)
        with torch.no_grad():
            _, nfe = sampling.generate(model, recipe, rng.randn(shape), rng, y)
        _sync(device)
        return nfe

    once()  # warm-up (cuDNN autotuning, allocator)
    t0 = time.perf_counter()
    for _ in range(reps):
        nfe = once()
    return (time.perf_counter() - t0) / reps, nfe


def sampling_rows(device, cpu):
    """img/s of 1-step and 2-step BCM sampling (the ImageNet-64 preset's recipes), per-sample
    seeded noise included, as `bcm sample` runs it."""
    from bcmcore.config import from_dict
    from bcmcore.nets import ModelConfig, build_model
    from bcmcore.recipes import get_recipe

    # as `bcm sample` runs: torch's defaults (IEEE fp32 matmuls, TF32 cuDNN convolutions)
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    rows = []
    for name, preset, exp, batch in (NETS[1], NETS[3]):
        c = preset_config(preset, exp, tiny=cpu)
        torch.manual_seed(0)
        model = build_model(from_dict(ModelConfig, c["model"], "model")).to(device).eval()
        n = 2 if cpu else 4 * batch
        classes = model.cfg.net.num_classes
        y = torch.randint(0, classes, (n,), device=device) if classes else None
        for recipe in ("imagenet64-nfe1", "imagenet64-nfe2"):
            r = get_recipe(recipe)
            sec, nfe = _sampling_seconds(model, r, c["shape"], n, y, device, 1 if cpu else 3)
            rows.append(
                {
                    "item": f"{name.split()[0]} bcm",
                    "variant": f"{nfe}-step",
                    "batch": n,
                    "img_per_s": n / sec,
                    "result": "ok",
                }
            )
    return rows


def train_row(device, cpu, net, variant):
    """bcm bench's training step on one preset network and variant -> the row's numbers."""
    from bcmcore.bench.step import bench_train

    name, preset, exp, batch = net
    c = preset_config(preset, exp, tiny=cpu)
    c["batch"] = c["cpu_batch"] = 2 if cpu else batch
    steps, warmup = (1, 0) if cpu else (6, 2)
    got = bench_train(
        name, device, steps=steps, warmup=warmup, variants=[variant], config=c, echo=False
    )
    if not got:
        return {"batch": c["batch"], "result": "skipped: not on this device"}
    r = got[0]
    keys = ("batch", "img_per_s", "peak_gb", "mfu", "tflops_per_step")
    return {**{k: r.get(k) for k in keys}, "result": "ok"}


def compiled_row(net, variant, timeout_s, cpu=False):
    """A compiled variant in a child process, killed at `timeout_s` (compile time is unbounded)."""
    cmd = [sys.executable, "-m", "bcmcore.bench.gpu_check", "row", net[0], variant] + ["cpu"] * cpu
    try:
        p = subprocess.run(
            cmd, env=child_env(cpu), capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"result": f"skipped: not done within the time budget ({timeout_s:.0f} s)"}
    if p.returncode != 0:
        raise RuntimeError((p.stderr.strip().splitlines() or ["child failed"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


def _child(argv):
    """`python -m bcmcore.bench.gpu_check row NAME VARIANT [cpu]`: one train row as JSON."""
    _, name, variant, *cpu = argv
    net = next(n for n in NETS if n[0] == name)
    device = torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device())
    row = train_row(device, bool(cpu), net, variant)
    _sync(device)
    print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------------- the run


class _Run:
    """Collects rows; each item runs guarded. A CUDA error ends the run (the context is lost)."""

    def __init__(self, device, budget_s):
        self.device, self.rows, self.t0, self.budget_s = device, [], time.time(), budget_s

    def left(self):
        return self.budget_s - (time.time() - self.t0)

    def item(self, check, item, fn, variant="", need_s=0):
        row = {"check": check, "item": item, "variant": variant}
        if self.left() < need_s:
            self.rows.append({**row, "result": "skipped: time budget"})
            return
        t = time.time()
        try:
            got = fn()
            _sync(self.device)
        except Exception as e:  # noqa: BLE001 - every failure becomes a row; CUDA ones stop the run
            first = (str(e).strip().splitlines() or [""])[0][:160]
            self.rows.append({**row, "result": f"FAIL: {type(e).__name__}: {first}"})
            if _is_cuda_error(e):
                raise CheckFailed(f"CUDA error in {check} {item}: {e}") from e
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            return
        finally:
            print(f"[gpu-check] {check} {item} {variant}: {time.time() - t:.1f} s", flush=True)
        for r in got if isinstance(got, list) else [got]:
            r = {"result": r} if isinstance(r, str) else r
            self.rows.append({**row, **r})


def fill_compiled_mfu(rows):
    """Compiled rows get the FLOPs counted for the same network uncompiled (FlopCounterMode does
    not see inside compiled graphs): MFU = FLOPs per step x steps per second / peak."""
    from bcmcore.bench.step import PEAK_BF16

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    peak = next((p for k, p in PEAK_BF16.items() if k in name), None)
    for row in rows:
        if "compile" in row.get("variant", "") and row.get("img_per_s") and peak:
            flops = next(
                (
                    r["tflops_per_step"]
                    for r in rows
                    if r.get("item") == row["item"] and r.get("tflops_per_step")
                ),
                None,
            )
            if flops:
                row["mfu"] = flops * 1e12 * row["img_per_s"] / row["batch"] / peak


def format_table(rows):
    """One fixed-width table (also valid Markdown)."""

    def cell(r, k):
        v = r.get(k)
        if v is None or v == "":
            return ""
        if k == "mfu":
            return f"{100 * v:.1f} %"
        if k in ("img_per_s", "peak_gb"):
            return f"{v:.1f}" if k == "peak_gb" else f"{v:.0f}"
        return str(v)

    table = [list(COLUMNS)] + [[cell(r, k) for k in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def run(cpu=False, out_dir="results/gpu-check", budget_s=440, tests=True):
    """The whole check; prints the table, writes gpu-check.{md,json} under out_dir. Returns the
    rows; raises CheckFailed if any item failed."""
    if not cpu and not torch.cuda.is_available():
        raise CheckFailed("bcm check gpu: no usable CUDA device (run it on a GPU node, or --cpu)")
    device = torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device())
    name = "cpu" if cpu else torch.cuda.get_device_name(device)
    r = _Run(device, budget_s)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cpu:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        try:
            # most important first; every item after the first checks the time left
            if tests:
                r.item("tests", "gpu-marked", lambda: gpu_tests(device, cpu, timeout_s=150))
            resume = "bcm train SIGKILL + resume"
            r.item("resume", resume, lambda: resume_check(work, cpu, True), "deterministic=True")
            for net in NETS:
                for v in CPU_VARIANTS if cpu else VARIANTS:
                    fn = lambda net=net, v=v: train_row(device, cpu, net, v)  # noqa: E731
                    r.item("train", net[0], fn, v, need_s=40)
            r.item("sampling", "1- and 2-step", lambda: sampling_rows(device, cpu), need_s=40)
            r.item("eval", "bcm eval (toy, random weights)", lambda: eval_check(work, cpu), "", 60)
            if not cpu:  # information: is a default (non-deterministic) GPU run bitwise too?
                fn = lambda: resume_check(work, cpu, False)  # noqa: E731
                r.item("resume", resume, fn, "deterministic=False", need_s=90)
            for net in NETS:  # compiling takes minutes: last, each bounded by the time left
                for v in COMPILED:
                    if cpu:
                        row = {"check": "train", "item": net[0], "variant": v}
                        r.rows.append({**row, "result": "skipped: cpu (inductor compiles minutes)"})
                        continue
                    fn = lambda net=net, v=v: compiled_row(net, v, r.left() - 10)  # noqa: E731
                    r.item("train", net[0], fn, v, need_s=60)
        finally:
            fill_compiled_mfu(r.rows)
            table = format_table(r.rows)
            head = (
                f"bcm check gpu on {name} (torch {torch.__version__}, "
                f"{time.time() - r.t0:.0f} s); MFU against the dense bf16 peak"
            )
            print(head + "\n" + table, flush=True)
            (out / "gpu-check.md").write_text(head + "\n\n" + table + "\n")
            torch.set_num_threads(threads)
            (out / "gpu-check.json").write_text(
                json.dumps({"device": name, "rows": r.rows}, indent=1)
            )
    failed = [x for x in r.rows if str(x.get("result", "")).startswith("FAIL")]
    if failed:
        raise CheckFailed(f"{len(failed)} item(s) failed (see the table, {out / 'gpu-check.md'})")
    return r.rows


if __name__ == "__main__":
    _child(sys.argv[1:])
