"""Network files in both containers (bcmcore/nets/io.py): `.pt` (plain dict, weights-only load) and
`.safetensors` (tensors + JSON header metadata); `bcm convert` between them; the bcm-network/1
`.pt` written before safetensors existed (tests/data/network_v1_bcm_tiny.pt) still loads."""

import json
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bcmcore import cli, sampling
from bcmcore.cli.convert import convert
from bcmcore.config import UserError, to_dict
from bcmcore.nets import ModelConfig, NetConfig, build_model, load_network, save_network
from bcmcore.nets.io import FORMAT, read_record, write_record
from bcmcore.recipes import EPS, Recipe, T

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
OLD = DATA / "network_v1_bcm_tiny.pt"  # written by save_network at 5d08a28 (tests/data/README.md)

NETS = {
    "bcm": NetConfig(
        arch="ncsnpp",
        channels=8,
        ch_mult=(1, 2),
        num_blocks=1,
        resolution=8,
        attn_res=(4,),
        num_classes=3,
        two_time=True,
        two_time_embed="project",
    ),
    "igct": NetConfig(arch="mlp", data_channels=2, channels=16, num_blocks=1, num_classes=3),
    "edm": NetConfig(
        arch="adm",
        channels=32,
        ch_mult=(1,),
        num_blocks=1,
        resolution=8,
        attn_res=(),
        head_channels=32,
        num_classes=3,
    ),
}


@torch.no_grad()
def tiny(kind):
    """Seeded non-zero weights everywhere (zero-initialised output layers would make equality
    vacuous)."""
    model = build_model(ModelConfig(kind=kind, net=NETS[kind]))
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def samples(model, seeds=range(4)):
    """A few steps of the model's own sampler from fixed per-sample seeds."""
    from bcmcore.nets.facts import data_shape

    kind = model.cfg.kind
    recipe = {
        "bcm": Recipe("combined", (T, 2.0, EPS)),
        "igct": Recipe("igct", steps=2),
        "edm": Recipe("heun", steps=3),
    }[kind].for_model(model)
    rng = sampling.SeededRNG(np.asarray(list(seeds)), "cpu")
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        return sampling.generate(model, recipe, rng.randn(data_shape(model)), rng, y)[0]


def assert_same_network(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind", ["bcm", "igct", "edm"])
def test_safetensors_round_trip_is_bitwise(kind, tmp_path):
    m = tiny(kind)
    config = {"seed": 7, "train": {"lr": 1e-4, "betas": [0.9, 0.99]}, "note": "ü"}
    save_network(tmp_path / "n.safetensors", m, 123, config)
    save_network(tmp_path / "n.pt", m, 123, config)
    assert (tmp_path / "n.safetensors").read_bytes()[8:9] == b"{"  # a safetensors file, not a zip
    m2, meta = load_network(tmp_path / "n.safetensors")
    m3, meta3 = load_network(tmp_path / "n.pt")
    assert_same_network(m, m2)
    assert meta["config"] == config and meta["step"] == 123 and meta["kind"] == kind
    assert meta["model_config"] == m.cfg == meta3["model_config"] and not m2.training
    assert meta["provenance"]["written_by"].startswith("bcm-pipeline ")
    assert torch.equal(samples(m2), samples(m)) and torch.equal(samples(m2), samples(m3))
    assert not list(tmp_path.glob(".tmp-*"))


def test_safetensors_header_is_readable_without_bcm(tmp_path):
    """The metadata another tool sees: strings only, the config as JSON, the sample shape."""
    from safetensors import safe_open

    save_network(tmp_path / "n.safetensors", tiny("bcm"), 5, {"seed": 3})
    with safe_open(str(tmp_path / "n.safetensors"), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == FORMAT and meta["kind"] == "bcm" and json.loads(meta["step"]) == 5
    assert json.loads(meta["data_shape"]) == [3, 8, 8] and json.loads(meta["config"]) == {"seed": 3}
    assert json.loads(meta["model"])["net"]["two_time_embed"] == "project"
    assert keys == set(tiny("bcm").state_dict())


def test_network_written_before_safetensors_still_loads(tmp_path):
    """The committed bcm-network/1 .pt reproduces the outputs recorded when it was written, and
    converts to safetensors (and back) bit for bit."""
    case = torch.load(DATA / "network_v1_bcm_tiny_case.pt", weights_only=True)
    old, meta = load_network(OLD)
    assert meta["step"] == 17 and meta["kind"] == "bcm" and meta["provenance"] == {}
    with torch.no_grad():
        out = old(case["x"], case["t"], case["u"], case["y"])
    torch.testing.assert_close(out, case["out"], rtol=0, atol=1e-5)  # across CPUs' kernels
    st, back = tmp_path / "old.safetensors", tmp_path / "back.pt"
    assert cli.main(["convert", str(OLD), "--out", str(st)]) == 0
    assert cli.main(["convert", str(st), "--out", str(back)]) == 0
    for path in (st, back):
        m, m_meta = load_network(path)
        assert_same_network(old, m)
        assert m_meta["config"] == meta["config"] and m_meta["step"] == 17
        with torch.no_grad():
            assert torch.equal(m(case["x"], case["t"], case["u"], case["y"]), out)
    source = load_network(back)[1]["provenance"]["converted_from"]
    assert source["file"] == str(st) and len(source["sha256"]) == 64
    assert load_network(st)[1]["provenance"]["converted_from"]["file"] == str(OLD)


def _write_st(path, tensors, meta):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta)
    return path


def _header(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def test_bad_safetensors_files_are_refused_naming_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    save_network(good, tiny("bcm"), 1, {})
    meta, tensors = _header(good)
    data = good.read_bytes()

    def refused(name, pattern, meta=None, tensors=tensors, raw=None):
        path = tmp_path / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            _write_st(path, tensors, meta)
        with pytest.raises(UserError, match=f"^{re.escape(str(path))}: .*{pattern}"):
            load_network(path)

    refused("truncated.safetensors", "truncated or wrong format", raw=data[: len(data) // 2])
    refused("short.safetensors", "truncated or wrong format", raw=data[:5])
    refused("v2.safetensors", "'bcm-network/2', this bcm-pipeline reads bcm-network/1",
            {**meta, "format": "bcm-network/2"})  # fmt: skip
    refused("foreign.safetensors", "not a bcm-network/1 network file", {"name": "x"})
    no_model = {k: v for k, v in meta.items() if k != "model"}
    refused("nomodel.safetensors", "no 'model'", no_model)
    refused("badjson.safetensors", "'config' is not valid JSON", {**meta, "config": "{oops"})
    refused(
        "shape.safetensors", "'data_shape'.*does not match", {**meta, "data_shape": "[1, 8, 8]"}
    )
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    nan = {**tensors, key: tensors[key].clone().index_fill_(0, torch.tensor([0]), float("nan"))}
    refused("nan.safetensors", f"weight '{key}' holds .* non-finite", meta, nan)
    missing = {k: v for k, v in tensors.items() if k != key}
    refused("missing.safetensors", "does not match its model config", meta, missing)
    other = {**meta, "model": json.dumps({**json.loads(meta["model"]), "kind": "cm"})}
    refused("kind.safetensors", "does not match its model config", other)


def test_bad_files_through_the_cli_give_one_line(tmp_path):
    bad = tmp_path / "v2.safetensors"
    save_network(bad, tiny("igct"), 1, {})
    meta, tensors = _header(bad)
    _write_st(bad, tensors, {**meta, "format": "bcm-network/2"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in (
        ["convert", str(bad), "--out", str(tmp_path / "x.pt")],
        ["sample", "--network", str(bad), "--out", str(tmp_path / "s"), "--seeds", "0-1"],
    ):
        res = subprocess.run([sys.executable, "-m", "bcmcore", *argv], env=env, text=True,
                             capture_output=True, timeout=300)  # fmt: skip
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and str(bad) in res.stderr, res.stderr
    assert not (tmp_path / "x.pt").exists()
    good = tmp_path / "good.pt"
    save_network(good, tiny("igct"), 1, {})
    for out, pattern in ((good, "same file as the source"), (tmp_path / "x.pth", "ending in")):
        with pytest.raises(UserError, match=pattern):
            convert([str(good), "--out", str(out)])
    assert not (tmp_path / "x.pth").exists()


def test_loading_runs_no_code_from_the_file(tmp_path, monkeypatch):
    """safetensors: a JSON header and raw bytes, no unpickler is ever called; .pt: torch's
    weights-only unpickler refuses a pickled callable, which never runs."""
    st = tmp_path / "n.safetensors"
    save_network(st, tiny("bcm"), 1, {})
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "kind": "bcm", "x": Payload()}, evil)
    assert not marker.exists()

    def forbidden(*a, **k):
        raise AssertionError("an unpickler ran while loading a safetensors network")

    with monkeypatch.context() as mp:
        for name in ("load", "loads", "Unpickler"):
            mp.setattr(pickle, name, forbidden)
        mp.setattr(torch, "load", forbidden)
        model, meta = load_network(st)
        assert meta["step"] == 1
    with pytest.raises(UserError, match="evil.pt.*not a readable network file"):
        load_network(evil)
    assert not marker.exists()


def test_load_dispatches_on_content_not_suffix(tmp_path):
    """A safetensors network renamed .pt (or a .pt renamed .safetensors) still loads."""
    m = tiny("edm")
    save_network(tmp_path / "a.safetensors", m, 2, {})
    save_network(tmp_path / "b.pt", m, 2, {})
    (tmp_path / "a.safetensors").rename(tmp_path / "a.pt")
    (tmp_path / "b.pt").rename(tmp_path / "b.safetensors")
    for name in ("a.pt", "b.safetensors"):
        assert_same_network(m, load_network(tmp_path / name)[0])
        assert read_record(tmp_path / name)["step"] == 2


def test_sample_command_reads_either_container(tmp_path):
    """`bcm sample` on the .pt and on its safetensors conversion: the same images, byte for byte."""
    pt = tmp_path / "n.pt"
    save_network(pt, tiny("bcm"), 3, {})
    assert cli.main(["convert", str(pt), "--out", str(tmp_path / "n.safetensors")]) == 0
    outs = []
    for name in ("n.pt", "n.safetensors"):
        argv = ["sample", "--network", str(tmp_path / name), "--out", str(tmp_path / name[2:])]
        assert cli.main([*argv, "--seeds", "0-5", "--device", "cpu"]) == 0
        outs.append(np.load(tmp_path / name[2:] / "samples.npz")["arr_0"])
    assert np.array_equal(*outs) and outs[0].std() > 0


def test_safetensors_keeps_every_dtype_and_shared_tensors(tmp_path):
    """Buffers of other dtypes and tensors that share storage (safetensors refuses shared memory
    unless each is written from its own copy) survive the round trip."""
    m = tiny("igct")
    sd = m.state_dict()
    record = {
        "format": FORMAT,
        "kind": "igct",
        "model": to_dict(m.cfg),
        "state_dict": {**sd, "extra_int": torch.arange(3), "view": next(iter(sd.values()))[:1]},
        "step": None,
        "config": None,
    }
    write_record(tmp_path / "r.safetensors", record)
    back = read_record(tmp_path / "r.safetensors")
    assert back["step"] is None and back["config"] is None
    for k, v in record["state_dict"].items():
        assert back["state_dict"][k].dtype == v.dtype and torch.equal(back["state_dict"][k], v)
    assert struct.unpack("<Q", (tmp_path / "r.safetensors").read_bytes()[:8])[0] > 0
