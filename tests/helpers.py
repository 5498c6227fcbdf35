"""Helpers shared by several test files (fixtures live in conftest.py): tiny training runs and
their subprocesses, the iGCT sampler by seeds, exact toy models for the sampling tests, snakemake
runs of the workflow, and the guard around torch.distributed's collectives."""

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml

import bcmcore
from bcmcore import presets, sampling
from bcmcore.dist import free_port, local_env
from bcmcore.nets.facts import data_shape
from bcmcore.recipes import Recipe
from bcmcore.toy import DEMO_GMM, GaussianMixture
from bcmcore.train.checkpoint import find_states, load_state
from bcmcore.train.monitor import status_step  # noqa: F401 (the tests watch status lines)


def igct_generate(model, seeds, y, w=1.0, steps=1, clamp=None):
    """iGCT guided samples of per-sample seeds through the SAMPLERS registry -> (x, nfe)."""
    rng = sampling.SeededRNG(seeds)
    z = rng.randn(data_shape(model))
    return sampling.generate(model, Recipe("igct", steps=steps), z, rng, y, w, clamp)


# ----------------------------------------------------------------------------- tiny training runs

TINY_BCM = {
    "kind": "bcm",
    "net": {
        "arch": "mlp",
        "data_channels": 2,
        "channels": 16,
        "num_blocks": 1,
        "two_time": True,
        "two_time_embed": "project",
    },
}
TINY_CM = {
    "kind": "cm",
    "net": {"arch": "mlp", "data_channels": 2, "channels": 16, "num_blocks": 1},
}


def make_run(run_dir, shards, model=TINY_BCM, loss=None, **train):
    """Write RUN_DIR/config.json for a tiny toy run (train keys override the small defaults)."""
    cfg = {
        "model": model,
        "loss": loss or {"kind": "bct"},
        "data": {"shards": str(shards)},
        "train": {
            "total_steps": 8,
            "batch": 16,
            "status_every": 1,
            "checkpoint_every": 2,
            "ema_rate": 0.9,
            "lr": 1e-3,
            **train,
        },
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg))
    return run_dir


def train_procs(run_dir, world=1, device_args=()):
    """Start `python -m bcmcore train` as `world` gloo processes (torchrun-style env). Rank 0's
    stdout piped."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        if world > 1:
            env.update(local_env(rank, world, port))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bcmcore", "train", "--run-dir", str(run_dir), *device_args],
                env=env,
                text=True,
                stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if rank == 0 else subprocess.DEVNULL,
            )
        )
    return procs


def run_to_end(run_dir, world=1):
    procs = train_procs(run_dir, world)
    out = procs[0].communicate(timeout=600)[0]
    for p in procs[1:]:
        p.wait(timeout=60)
    assert all(p.returncode == 0 for p in procs), out
    return out


def run_and_kill(run_dir, kill_step, world=1):
    """Start the run and SIGKILL every process as soon as rank 0 reports step `kill_step`."""
    procs = train_procs(run_dir, world)
    seen = []
    for line in procs[0].stdout:
        seen.append(line)
        if status_step(line) == kill_step:
            for p in procs:
                p.send_signal(signal.SIGKILL)
            break
    for p in procs:
        p.wait(timeout=60)
    assert procs[0].returncode == -signal.SIGKILL, "".join(seen)


def assert_same_state(a, b, exact=True):
    """All parameters, EMA weights and optimizer state equal (bitwise, or to float tolerance)."""

    def walk(x, y, where):
        if torch.is_tensor(x):
            ok = torch.equal(x, y) if exact else torch.allclose(x, y, rtol=1e-4, atol=1e-6)
            assert ok, (
                f"{where} differs (max |diff| {(x.double() - y.double()).abs().max().item():.3g})"
            )
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        else:
            assert x == y, f"{where}: {x!r} != {y!r}"

    assert a["step"] == b["step"]
    assert a.keys() == b.keys()
    for key in ("net", "ema", "optimizer", "loss"):  # loss: CD's target network, where it has one
        if key in a:
            walk(a[key], b[key], key)


def final_state(run_dir):
    return load_state(find_states(run_dir)[-1][1])


# ---------------------------------------------------------------- exact toy models (sampling)

EPS, T = 0.002, 80.0


class GaussFlow(torch.nn.Module):
    """Exact flow map of data ~ N(0, s^2 I): Phi(x, t -> u) = x sqrt(s^2 + u^2) / sqrt(s^2 + t^2).
    Cheap."""

    kind, sigma_min, sigma_max, s = "bcm", EPS, T, 0.5

    def forward(self, x, t, u=None, y=None):
        u = torch.full_like(t, self.sigma_min) if u is None else u
        a = torch.sqrt((self.s**2 + u**2) / (self.s**2 + t**2))
        return x * a.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)

    @staticmethod
    def phi(x, t, u, s=0.5):
        return x * math.sqrt((s**2 + u**2) / (s**2 + t**2))


class GaussDenoiser(torch.nn.Module):
    """Ideal denoiser of N(0, s^2 I): D(x, sigma) = x s^2 / (s^2 + sigma^2) (kind edm)."""

    kind, sigma_min, sigma_max, s = "edm", EPS, T, 0.5

    def forward(self, x, sigma, y=None):
        return x * (self.s**2 / (self.s**2 + sigma**2)).reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)


class GMMDenoiser(torch.nn.Module):
    """Exact denoiser of a Gaussian mixture (kind edm); label y = k selects component k, -1 the
    mixture."""

    kind, sigma_min, sigma_max = "edm", EPS, T

    def __init__(self, gmm=DEMO_GMM):
        super().__init__()
        self.gmm = gmm

    def component(self, k):
        return GaussianMixture((self.gmm.means[k],), (self.gmm.stds[k],), (1.0,))

    def forward(self, x, sigma, y=None):
        out = torch.as_tensor(self.gmm.denoise(x.double().numpy(), sigma.double().numpy()))
        if y is not None:
            for k in range(len(self.gmm.means)):
                sel = (y == k).numpy()
                if sel.any():
                    out[sel] = torch.as_tensor(
                        self.component(k).denoise(
                            x[sel].double().numpy(), sigma[sel].double().numpy()
                        )
                    )
        return out.to(x.dtype)


class Counted(torch.nn.Module):
    """Counts calls to the wrapped model; exposes its kind and sigma range."""

    def __init__(self, m, kind=None):
        super().__init__()
        self.m, self.calls = m, 0
        self.kind, self.sigma_min, self.sigma_max = kind or m.kind, m.sigma_min, m.sigma_max

    def forward(self, *a, **k):
        self.calls += 1
        return self.m(*a, **k)


class ZeroRNG:
    """An rng whose injected noise is zero (isolates the deterministic part of a sampler)."""

    seeds = None

    def randn(self, shape, dtype=torch.float32):
        return torch.zeros((1, *shape), dtype=dtype)


def demo_tiny(kind, num_classes=0, channels=1):
    """A demo-shaped untrained network (8x8 pixels, 1 channel: the digits) of `kind`."""
    from bcmcore.nets import build_model
    from bcmcore.nets.config import ModelConfig, NetConfig

    net = NetConfig(
        arch="ncsnpp",
        data_channels=channels,
        resolution=8,
        channels=8,
        ch_mult=(1, 2),
        num_blocks=1,
        attn_res=(),
        two_time=(kind == "bcm"),
        num_classes=num_classes,
    )
    torch.manual_seed(0)
    return build_model(ModelConfig(kind=kind, net=net))


def save_untrained_networks(directory, tiny, num_classes, step):
    """{bcm, igct, edm}.pt of untrained networks `tiny(kind, classes)`: bcm unconditional, the
    guided kinds with `num_classes` labels, each saved as if at `step`."""
    from bcmcore.nets import save_network

    paths = {}
    for kind, classes in (("bcm", 0), ("igct", num_classes), ("edm", num_classes)):
        paths[kind] = directory / f"{kind}.pt"
        save_network(paths[kind], tiny(kind, classes), step, {"note": "untrained test network"})
    return paths


def gmm_points(n=16, seed=0):
    rng = sampling.SeededRNG(range(seed, seed + n))
    return rng, rng.randn((2,), dtype=torch.float64)


def flow(x, t, u):
    return torch.as_tensor(DEMO_GMM.flow(x.numpy(), t, u))


# ------------------------------------------------------------------------ the workflow (snakemake)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(cwd, *args, profile="cluster/local", timeout=300):
    """Run snakemake on the project's Snakefile from `cwd`; returns the CompletedProcess
    (stdout+stderr)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        "timeout",
        "-k",
        "10",
        str(timeout),
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "workflow/Snakefile"),
        "--profile",
        str(ROOT / profile),
        *args,
    ]
    return subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def job_counts(out):
    """Snakemake's 'Job stats' table of a dry run -> {rule: count}."""
    table = out.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def jobs(out):
    """The job blocks of a dry run with -p: [{'rule', 'wildcards', 'input', 'shell'}]."""
    blocks = []
    for block in re.split(r"\n\[[^\]]+\]\n", out):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if rule:
            get = lambda key, b=block: (re.search(rf"^\s+{key}: (.*)$", b, re.M) or [None, ""])[1]
            shell = re.search(r"^Shell command: (.*)$", block, re.M)
            blocks.append(
                {
                    "rule": rule[1],
                    "wildcards": get("wildcards"),
                    "input": get("input"),
                    "shell": shell[1] if shell else "",
                }
            )
    return blocks


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def stage_raw_files(cwd, preset):
    """Empty stand-ins for a preset's raw files (a dry run checks that they exist, never reads
    them)."""
    cfg = yaml.safe_load(presets.preset_path(preset).read_text())
    for ds in cfg["datasets"].values():
        for raw in ds.get("raw", []):
            path = Path(cwd) / raw["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix:
                path.touch()
            else:
                path.mkdir(exist_ok=True)


def assert_stopped_before_any_job(res, cwd, *needles):
    assert res.returncode != 0, res.stdout[-3000:]
    for needle in needles:
        assert needle in res.stdout, f"{needle!r} not in:\n{res.stdout[-3000:]}"
    assert not (Path(cwd) / "results").exists(), (
        "a job ran although the workflow should have stopped first"
    )


# ------------------------------------------------------------- the collective guard (bcmcore.dist)

DIST_FILE = Path(bcmcore.__file__).resolve().parent / "dist.py"
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "gather",
    "gather_object",
    "scatter",
    "scatter_object_list",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "send",
    "recv",
    "isend",
    "irecv",
)


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)


def install_guard():
    """Wrap torch.distributed's collectives; record calls from outside bcmcore/dist.py and tensors
    not on the communication device (decided here from the backend, not by the code under test)."""
    import torch.distributed as td

    record = {"calls": {}, "violations": []}

    def wrap(name, fn):
        def guarded(*args, **kwargs):
            frame = sys._getframe(1)
            where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"
            record["calls"][name] = record["calls"].get(name, 0) + 1
            if Path(frame.f_code.co_filename).resolve() != DIST_FILE:
                record["violations"].append(f"{name} called from {where}, not from bcmcore/dist.py")
            nccl = td.get_backend() == "nccl"
            want = (
                torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
            )
            for t in _tensors([*args, *kwargs.values()]):
                if t.device != want:
                    record["violations"].append(f"{name} from {where}: a tensor on {t.device}")
            return fn(*args, **kwargs)

        return guarded

    for name in COLLECTIVES:
        setattr(td, name, wrap(name, getattr(td, name)))
    return record


class _FakeLayers(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).repeat(1, 342)[:, :2048, None, None]


class FakeInception(torch.nn.Module):
    """A TorchScript file with the interface of NVIDIA's Inception (layers, return_features):
    plumbing only."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x, return_features: bool = False):
        x = torch.nn.functional.interpolate(
            x, size=(299, 299), mode="bilinear", align_corners=False
        )
        return self.layers((x - 128) / 128).view(x.shape[0], 2048)
