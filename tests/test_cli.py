"""bcmcore.cli and the layering it sits on: no import circle, argparse only in cli/, one sampler
registry read by `bcm sample`, the eval spec and the sweep, and one inversion routine behind both
`bcm invert` and the sweep."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bcmcore import cli, sampling
from bcmcore.config import ConfigError
from bcmcore.metrics.report import read_csv
from bcmcore.metrics.spec import InversionSpec, SamplerSpec
from bcmcore.nets import ModelConfig, NetConfig, build_model, save_network

REPO = Path(__file__).resolve().parents[1]


def import_graph():
    """{module: set of project modules it imports} over bcmcore/ and data_prep/, every import
    statement counted (also those inside functions)."""
    files = {}
    for path in sorted((REPO / "bcmcore").rglob("*.py")) + sorted(
        (REPO / "data_prep").rglob("*.py")
    ):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path

    def resolve(name):
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {m: set() for m in files}
    for m, path in files.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[m] |= {r for r in map(resolve, targets) if r and r != m}
    return graph, files


def find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return path[path.index(n) :] + [n]
            if n not in state:
                found = visit(n, path + [n])
                if found:
                    return found
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [m])
            if found:
                return found
    return None


def test_import_graph_has_no_circle_and_argparse_lives_only_in_cli():
    graph, files = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the check itself finds a circle when there is one
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    below = []
    for m, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if "argparse" in names and not m.startswith("bcmcore.cli"):
                below.append(m)
    assert below == [], f"argparse below bcmcore/cli/: {below}"
    # no library module reaches up into the CLI (`python -m bcmcore` is the CLI itself)
    up = [m for m in graph if not m.startswith("bcmcore.cli") and "bcmcore.cli" in graph[m]]
    assert up == ["bcmcore.__main__"], up


def test_every_family_module_declares_its_commands():
    table = cli.commands()
    assert {
        "sample",
        "invert",
        "edit",
        "train",
        "eval",
        "edit-rate",
        "launch",
        "bench",
        "prep",
    } <= set(table)
    assert cli.main(["no-such-command"]) == 2


# ----------------------------------------------------------------------------- one sampler registry


def _mlp(kind, path, **model):
    torch.manual_seed(0)
    net = NetConfig(arch="mlp", data_channels=2, channels=16, num_blocks=1, two_time=kind == "bcm")
    save_network(path, build_model(ModelConfig(kind=kind, net=net, **model)), 1, {})
    return str(path)


@pytest.fixture
def toy_sampler(monkeypatch):
    """A sampler registered the one documented way; it returns the constant 0.25 with NFE 3."""
    monkeypatch.delitem(sampling.SAMPLERS, "toy-constant", raising=False)

    @sampling.register("toy-constant", ("cm", "bcm"))
    def toy(model, z, recipe, rng, y, w, clamp):
        return torch.full_like(z, 0.25), 3

    yield "toy-constant"
    sampling.SAMPLERS.pop("toy-constant", None)


def test_a_registered_sampler_reaches_bcm_sample_the_spec_and_the_sweep(tmp_path, toy_sampler):
    net = _mlp("cm", tmp_path / "cm.pt")
    # bcm sample: a --sampler choice
    out = tmp_path / "sample"
    argv = ["sample", "--network", net, "--sampler", toy_sampler, "--seeds", "0-3"]
    assert cli.main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    info = json.loads((out / "samples.json").read_text())
    assert info["sampler"] == toy_sampler and info["nfe"] == 3
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], np.full((4, 2), 0.25))
    # the spec: a valid sampler name, with the kinds it declared
    assert SamplerSpec(sampler=toy_sampler).resolve("s", "cm").method == toy_sampler
    with pytest.raises(ConfigError, match="runs on kind cm or bcm"):
        SamplerSpec(sampler=toy_sampler).resolve("s", "edm")
    # the sweep: its row in fid_table.csv
    shards = tmp_path / "shards"
    assert cli.main(["prep", "gmm2d", "--out", str(shards), "--workers", "1", "--n-train", "400",
                     "--n-test", "50"]) == 0  # fmt: skip
    spec = {
        "dataset": str(shards),
        "features": {"kind": "raw"},
        "num_samples": 16,
        "batch_size": 8,
        "pr_real": 100,
        "models": [
            {"name": "cm", "network": net, "kind": "cm", "samplers": [{"sampler": toy_sampler}]}
        ],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    evaluation = ["eval", "--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path / "eval")]
    assert cli.main([*evaluation, "--device", "cpu", "--no-progress"]) == 0
    (row,) = read_csv(tmp_path / "eval" / "fid_table.csv")
    assert row["sampler"] == toy_sampler and int(row["nfe"]) == 3


# ---------------------------------------------------------------------------- one inversion routine


def test_sweep_and_bcm_invert_agree_on_a_model_with_its_own_sigma_max(tmp_path):
    """An EDM trained with sigma_max = 40: both invert along the Karras grid of ITS sigmas (the
    sweep used to build the grid from the module's T = 80 and stop on it)."""
    from bcmcore.metrics.sweep import reconstruct_batch
    from bcmcore.nets import load_network

    net = NetConfig(arch="adm", data_channels=3, resolution=8, channels=32, ch_mult=(1,),
                    num_blocks=1, attn_res=(), head_channels=32)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path / "edm.pt"
    save_network(path, build_model(ModelConfig(kind="edm", net=net, sigma_max=40.0)), 1, {})
    imgs = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    np.savez(tmp_path / "imgs.npz", images=imgs)
    argv = ["invert", "--network", str(path), "--input", str(tmp_path / "imgs.npz")]
    argv += ["--indices", "0-3", "--num-steps", "4", "--out", str(tmp_path / "inv")]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    cli_out = np.load(tmp_path / "inv" / "invert.npz")
    model, _ = load_network(path)
    x = torch.as_tensor(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    x_hat, n_inv, n = reconstruct_batch(model, InversionSpec(steps=4), x, None, None)
    assert (n_inv, n) == (
        json.loads((tmp_path / "inv" / "invert.json").read_text())["inversion_nfe"],
        2 * n_inv + 1,
    )
    from bcmcore.images import to_uint8_nhwc

    np.testing.assert_array_equal(to_uint8_nhwc(x_hat), cli_out["arr_0"])


def test_no_test_file_imports_another():
    """Shared test code lives in conftest.py and helpers.py, never in a test file."""
    bad = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("test_"):
                bad.append(f"{path.name}: from {node.module}")
            if isinstance(node, ast.Import):
                bad += [
                    f"{path.name}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("test_")
                ]
    assert bad == []
