"""The correctness items of `bcm check gpu` (bench/gpu_check.py), in child processes as a user
runs them: the gpu-marked tests, bitwise resume of a SIGKILLed `bcm train`, a `bcm eval` sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/, workflow/config/)


def _prep(*args):
    """`bcm prep` in a child process (the library does not call up into the CLI)."""
    cmd = [sys.executable, "-m", "bcmcore", "prep", *args, "--workers", "1"]
    p = subprocess.run(
        cmd, cwd=ROOT, env=child_env(True), capture_output=True, text=True, timeout=300
    )
    if p.returncode != 0:
        raise RuntimeError(f"bcm prep {' '.join(args)} failed: {p.stderr.strip()[-500:]}")


def child_env(cpu):
    """Child processes: one CPU thread each in --cpu mode (tiny tensors; a shared CPU)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", **({"OMP_NUM_THREADS": "1"} if cpu else {}))


def gpu_tests(device, cpu, timeout_s=150):
    """The gpu-marked tests in a fresh process (on CPU they all skip: the command is checked)."""
    tests = ROOT / "tests"
    if not tests.is_dir():
        return [{"item": "pytest -m gpu", "result": f"FAIL: {tests} not found (run in the repo)"}]
    targets = [str(tests / "test_dist.py")] if cpu else [str(tests)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *targets]
    kw = dict(cwd=ROOT, env=child_env(cpu), capture_output=True, text=True, timeout=timeout_s)
    p = subprocess.run(cmd, **kw)
    summary = (p.stdout.strip().splitlines() or ["(no output)"])[-1].strip("= ")
    ok = p.returncode == 0 and (cpu or "skipped" not in summary)  # on a GPU nothing may skip
    if not ok:
        print(p.stdout[-4000:], p.stderr[-2000:], file=sys.stderr)
    return [{"item": "pytest -m gpu", "result": ("ok: " if ok else "FAIL: ") + summary}]


def _train(run_dir, cpu, kill_at=None):
    """`bcm train` in a fresh process; with kill_at, SIGKILLed when it reports that step."""
    from bcmcore.train.monitor import status_step

    env = child_env(cpu)
    cmd = [sys.executable, "-m", "bcmcore", "train", "--run-dir", str(run_dir)]
    cmd += ["--device", "cpu"] if cpu else []
    p = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = []
    for line in p.stdout:
        out.append(line)
        if kill_at is not None and status_step(line) == kill_at:
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=120)
    text = "".join(out)
    if kill_at is None and p.returncode != 0:
        raise RuntimeError(f"bcm train failed (exit {p.returncode}):\n{text[-3000:]}")
    return text


def _differences(a, b, where=""):
    if torch.is_tensor(a):
        return [] if torch.equal(a, b) else [where]
    if isinstance(a, dict):
        return [d for k in a for d in _differences(a[k], b.get(k), f"{where}.{k}")]
    if isinstance(a, (list, tuple)):
        return [
            d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [where]


def resume_check(work, cpu, deterministic):
    """SIGKILL after step 5 (state 3 is complete), resume, compare with an uninterrupted run."""
    from bcmcore.train.checkpoint import find_states, load_state

    shards = work / "digits"
    if not (shards / "manifest.json").is_file():
        _prep("digits", "--out", str(shards), "--resolution", "16", "--shard-size", "500")
    steps = 8 if cpu else 20
    net = dict(arch="adm", data_channels=1, resolution=16, channels=32, ch_mult=[1, 2])
    net.update(num_blocks=1, attn_res=[8], head_channels=32, num_classes=10, dropout=0.1)
    train = dict(total_steps=steps, batch=8 if cpu else 64, lr=1e-3, ema_rate=0.9)
    train.update(status_every=1, checkpoint_every=3, deterministic=deterministic)
    cfg = {
        "model": {"kind": "bcm", "net": {**net, "two_time": True}},
        "loss": {"kind": "bct", "curriculum": {"kind": "ict", "s0": 10, "s1": 160}},
        "data": {"shards": str(shards), "num_workers": 0},
        "train": train,
    }
    runs = {}
    for name in ("ref", "run"):
        runs[name] = work / f"resume-{'det' if deterministic else 'nondet'}-{name}"
        runs[name].mkdir(parents=True, exist_ok=True)
        (runs[name] / "config.json").write_text(json.dumps(cfg))
    _train(runs["ref"], cpu)
    _train(runs["run"], cpu, kill_at=5)
    if (runs["run"] / "network-final.pt").exists():
        raise RuntimeError("the run finished before it was killed: the check proved nothing")
    out = _train(runs["run"], cpu)
    if "resumed from training-state-" not in out:
        raise RuntimeError(f"the second run did not resume:\n{out[-2000:]}")
    a, b = (load_state(find_states(runs[n])[-1][1]) for n in ("ref", "run"))
    diff = [d for k in ("net", "ema", "optimizer") for d in _differences(a[k], b[k], k)]
    if not diff:
        return "ok: bitwise identical"
    msg = f"{len(diff)} tensors differ (e.g. {diff[0]})"
    return ("FAIL: " if deterministic else "info: ") + msg


def eval_check(work, cpu):
    """`bcm eval` in a fresh process on toy data with untrained bcm / igct / edm networks."""
    from bcmcore.nets import ModelConfig, NetConfig, build_model, save_network

    data = work / "gmm2d"
    if not (data / "manifest.json").is_file():
        _prep("gmm2d", "--out", str(data), "--n-train", "2000", "--n-test", "200")
    models = []
    for kind, classes in (("bcm", 0), ("igct", 4), ("edm", 4)):
        net = NetConfig(
            arch="mlp",
            data_channels=2,
            channels=32,
            num_blocks=2,
            two_time=kind == "bcm",
            num_classes=classes,
        )
        torch.manual_seed(0)
        save_network(work / f"{kind}.pt", build_model(ModelConfig(kind=kind, net=net)), 0, {})
        models.append({"name": kind, "network": str(work / f"{kind}.pt"), "kind": kind})
    models[0].update(
        samplers=[{"recipe": "demo-nfe1"}, {"recipe": "demo-nfe2"}],
        inversions=[{"times": [0.07, 80.0]}],
    )
    models[1].update(samplers=[{"sampler": "igct", "steps": 1}], guidance={"ws": [1, 4]})
    models[2].update(guidance={"ws": [1, 2], "recipe": "edm-18"})
    spec = {
        "dataset": str(data),
        "features": {"kind": "raw"},
        "num_samples": 200 if cpu else 2000,
        "batch_size": 100 if cpu else 1000,
        "inversion_count": 50,
        "pr_real": 200,
        "models": models,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "bcmcore", "eval", "--spec", str(work / "spec.json")]
    cmd += ["--out", str(work / "eval"), "--no-progress"] + (["--device", "cpu"] if cpu else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=child_env(cpu), capture_output=True, text=True, timeout=120)
    sec = time.perf_counter() - t0
    tables = [work / "eval" / f for f in ("fid_table.csv", "mse_table.csv", "guidance_table.csv")]
    if p.returncode != 0 or not all(t.is_file() for t in tables):
        raise RuntimeError(f"bcm eval failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return f"ok: 3 tables in {sec:.0f} s"
