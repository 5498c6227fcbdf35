"""`bcm bench train --vs A B`: two training-step configs, or one config under two code trees, timed
interleaved in two persistent worker processes (bcmcore/bench/worker.py); the ratio B/A of sec/step
per round, its median and spread. Both sides share the machine's drift within a round, so the ratio
holds on a shared, noisy machine where either time alone does not. Each step is timed alone, and
the ratio of each round's fastest steps is reported too: another process's load only ever adds
time, so the fastest step is the closest to the step's own cost.

A side is CONFIG[@OVERRIDE]..., overrides separated by '@' (a value may hold commas: [1,2]):
  CONFIG               a bench config (bcmcore.bench.step.CONFIGS), <preset>/<experiment>, or
                       digits/<experiment> (the demo, workflow/config/config.yaml)
  threads=N            torch intra-op threads of the side's worker (default: torch's, all cores)
  batch=N              the side's batch (default: --batch, else the config's CPU / GPU batch)
  net.K=V              model.net.K; V is read as YAML (8, 0.5, [1,2], true)
  model.K=V, loss.K=V  any key of the run config's model / loss section
  train.K=V            a TrainConfig key of the step (train.ema_rate=0.999, train.tf32=false)
  fp32 | bf16 | notf32 | compile | channels_last   variant tokens, as in --variants
e.g. digits/ict@threads=1, digits/ict@net.resolution=8@batch=64, ncsnpp-cifar@channels_last.
"""

import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bcmcore.config import UserError, from_dict

TOKENS = ("fp32", "bf16", "notf32", "compile", "channels_last")
EXPECTED = (
    "threads=N, batch=N, net.<key>=V, model.<key>=V, loss.<key>=V, train.<key>=V, or a variant "
    f"token ({', '.join(TOKENS)})"
)
THIS_TREE = Path(__file__).resolve().parents[2]


def _positive(where, key, text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"{where}: {key} expects a positive integer, got {text!r}")
    return n


def _set(cfg, keys, value, where, item):
    for k in keys[:-1]:
        cfg = cfg.setdefault(k, {})
        if not isinstance(cfg, dict):
            raise UserError(f"{where}: {item!r}: {k} is not a mapping")
    cfg[keys[-1]] = value


def parse_side(spec, label, device, batch=None):
    """A side spec -> {spec, config {model, loss, shape}, batch, threads, train_keys, params};
    the whole config is built (on the meta device) here, so a bad key stops before any worker."""
    import torch

    from bcmcore.bench.step import bench_config, variant_keys
    from bcmcore.losses import build_loss
    from bcmcore.nets import ModelConfig, build_model
    from bcmcore.nets.facts import data_shape
    from bcmcore.train.config import TrainConfig

    where = f"--vs side {label} {spec!r}"
    name, *overrides = spec.split("@")
    try:
        c = copy.deepcopy(bench_config(name))
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    threads, tokens, train_keys = None, [], {}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"batch", "total_steps"}
    for item in overrides:
        key, eq, text = item.partition("=")
        head, _, rest = key.partition(".")
        if not eq and key in TOKENS:
            tokens.append(key)
        elif eq and key == "threads":
            threads = _positive(where, key, text)
        elif eq and key == "batch":
            batch = _positive(where, key, text)
        elif eq and rest and head in ("net", "model", "loss", "train"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise UserError(f"{where}: {key}: {text!r} is not a YAML value") from None
            if head == "train":
                if rest not in train_fields:
                    raise UserError(
                        f"{where}: unknown override key {key!r} (train keys: "
                        f"{', '.join(sorted(train_fields))}; the batch is batch=N)"
                    )
                train_keys[rest] = value
            else:
                path = ["model", "net"] if head == "net" else [head]
                _set(c, path + rest.split("."), value, where, item)
        else:
            raise UserError(f"{where}: unknown override key {item!r} (expected {EXPECTED})")
    cuda = device.type == "cuda"
    batch = batch or c["batch" if cuda else "cpu_batch"]
    try:
        model_cfg = from_dict(ModelConfig, c["model"], "model")
        build_loss(c["loss"], model_cfg)
        with torch.device("meta"):
            model = build_model(model_cfg)
        keys = {**(variant_keys("+".join(tokens)) if tokens else {}), **train_keys}
        from_dict(TrainConfig, {**keys, "total_steps": 400_000, "batch": batch}, "train")
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    shape = data_shape(model)
    if keys.get("bf16") and not cuda:
        raise UserError(f"{where}: bf16 autocast runs on CUDA only (train.bf16)")
    if keys.get("channels_last") and len(shape) != 3:
        raise UserError(f"{where}: channels_last is for image nets")
    return {
        "spec": spec,
        "config": {"model": c["model"], "loss": c["loss"], "shape": list(shape)},
        "batch": batch,
        "threads": threads,
        "train_keys": keys,
        "params": sum(p.numel() for p in model.parameters()),
    }


def check_tree(path):
    """A --baseline-tree: a directory holding a bcmcore package with its step benchmark (bench/
    since the bench package, bench.py before)."""
    tree = Path(path).resolve()
    pkg = tree / "bcmcore"
    if not (pkg / "__init__.py").is_file() or not any(
        (pkg / f).is_file() for f in ("bench/step.py", "bench.py")
    ):
        raise UserError(
            f"--baseline-tree {path}: no bcmcore package there (expected "
            f"{tree}/bcmcore/__init__.py and bench/step.py or bench.py: a checkout such as made "
            "by `git worktree add /tmp/base <rev>`)"
        )
    return tree


def worker_of(tree):
    """The worker script to run for `tree`: the tree's own (bcmcore/bench/worker.py, or
    bcmcore/bench_worker.py in checkouts from before the bench package), so each side imports
    its own code by its own paths; a checkout older than both gets this tree's worker, which
    falls back to the old import path."""
    for rel in ("bench/worker.py", "bench_worker.py"):
        if (tree / "bcmcore" / rel).is_file():
            return tree / "bcmcore" / rel
    return Path(__file__).with_name("worker.py")


def git_rev(tree):
    """'<short rev>' (+'-dirty' with uncommitted changes to tracked files), or None outside git."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if rev.returncode:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty else "")


class Worker:
    """One side's process: started once, set up (build + warm-up), then asked for rounds."""

    def __init__(self, label, side, tree, device, warmup):
        self.label, self.side, self.tree = label, side, tree
        env = dict(os.environ, PYTHONPATH=str(tree))  # only that tree's bcmcore is importable
        if side["threads"]:
            env.update(OMP_NUM_THREADS=str(side["threads"]), MKL_NUM_THREADS=str(side["threads"]))
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(worker_of(tree))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        keys = ("config", "batch", "threads", "train_keys")
        self.send(
            {"setup": {**{k: side[k] for k in keys}, "device": str(device), "warmup": warmup}}
        )

    def send(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def receive(self):
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line.strip() else {}
        if "error" in reply or not reply:
            self.stderr.seek(0)
            text = reply.get("error") or self.stderr.read()[-2000:] or "no output"
            raise UserError(
                f"--vs side {self.label} ({self.side['spec']}, code {self.tree}): the worker "
                f"failed:\n{text.rstrip()}"
            )
        return reply

    def close(self):
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def order(rounds):
    """The run order: A B, B A, A B, ... (each round's first side alternates, an ABBA design). A
    side that always ran first would always meet the caches and clock the other side left, and
    any drift of the machine linear in time would favour one side; alternating cancels both to
    first order over each two rounds."""
    return [("A", "B") if r % 2 == 0 else ("B", "A") for r in range(rounds)]


def spread(ratios):
    out = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    if len(ratios) > 1:
        out["q1"], _, out["q3"] = statistics.quantiles(ratios, n=4, method="inclusive")
    return out


def compare(a, b, device, batch=None, steps=10, warmup=3, rounds=7, baseline_tree=None, echo=True):
    """Time side specs a and b interleaved (`order`); -> {sides, runs, rounds, ratio, ...}."""
    if steps < 1 or rounds < 1 or warmup < 0:
        raise UserError("--steps and --rounds: expected positive integers, --warmup >= 0")
    trees = {"A": check_tree(baseline_tree) if baseline_tree else THIS_TREE, "B": THIS_TREE}
    sides = {"A": parse_side(a, "A", device, batch), "B": parse_side(b, "B", device, batch)}
    load0 = os.getloadavg()[0]
    workers = {}
    try:  # both set up at once (untimed), then timed one at a time
        for s in "AB":
            workers[s] = Worker(s, sides[s], trees[s], device, warmup)
        for s in "AB":
            info = workers[s].receive()
            if Path(info["code"]).resolve() != trees[s] / "bcmcore":
                raise UserError(f"--vs side {s}: bcmcore came from {info['code']}, not {trees[s]}")
            sides[s].update(info, tree=str(trees[s]), rev=git_rev(trees[s]))
        if echo:  # the sides, then each round as it ends: a long run shows its progress
            print("\n".join(table(sides, device, steps, rounds)), flush=True)
        runs, rows = [], []
        for r, pair in enumerate(order(rounds)):
            got = {}
            for s in pair:
                workers[s].send({"steps": steps})
                got[s] = workers[s].receive()
                runs.append({"round": r, "side": s, **got[s]})
            mean = {s: got[s]["sec_per_step"] for s in "AB"}
            fast = {s: got[s]["min_sec_per_step"] for s in "AB"}
            row = {"round": r, "order": "".join(pair), "A": mean["A"], "B": mean["B"]}
            row.update(ratio=mean["B"] / mean["A"], A_min=fast["A"], B_min=fast["B"])
            rows.append({**row, "ratio_min": fast["B"] / fast["A"]})
            if echo:
                print(round_line(rows[-1]), flush=True)
    finally:
        for w in workers.values():
            w.close()
    q, q_min = spread([row["ratio"] for row in rows]), spread([row["ratio_min"] for row in rows])
    result = {
        "sides": sides,
        "device": str(device),
        "steps": steps,
        "warmup": warmup,
        "cpu_count": os.cpu_count(),
        "loadavg": [load0, os.getloadavg()[0]],
        "runs": runs,
        "rounds": rows,
        "ratio": q,
        "ratio_min": q_min,
        "sec_per_step": {s: statistics.median(row[s] for row in rows) for s in "AB"},
    }
    if echo:
        print(f"  B/A median {summary(q)}; of the fastest steps {summary(q_min)}", flush=True)
        print(
            f"  load average {result['loadavg'][0]:.1f} -> {result['loadavg'][1]:.1f} on "
            f"{result['cpu_count']} cores",
            flush=True,
        )
    return result


def summary(q):
    iqr = f"IQR {q['q1']:.3f}-{q['q3']:.3f}, " if "q1" in q else ""
    return f"{q['median']:.3f} ({iqr}range {q['min']:.3f}-{q['max']:.3f})"


def table(sides, device, steps, rounds):
    """The report's head: what runs, one line per side, and the columns of the round lines."""
    lines = [
        f"bcm bench train --vs: {rounds} rounds x {steps} steps per side on {device}, "
        "interleaved AB, BA, ..."
    ]
    for s, side in sides.items():
        lines.append(
            f"  {s}  {side['spec']}: batch {side['batch']}, {side['threads']} threads, "
            f"{side['params'] / 1e6:.3g} M params, code {side['code']} ({side['rev'] or 'no git'})"
        )
    return lines + [
        "  round  order  A sec/step  B sec/step     B/A  fastest step: A          B     B/A"
    ]


def round_line(row):
    return (
        f"  {row['round'] + 1:5d}  {row['order']:5s}  {row['A']:10.4g}  {row['B']:10.4g}  "
        f"{row['ratio']:6.3f}  {row['A_min']:15.4g}  {row['B_min']:9.4g}  {row['ratio_min']:6.3f}"
    )
