# ruff: noqa: E501  (the probe table keeps one case per line)
"""Issue 26, the core mechanisms: one name rule + inside() for output paths, an announced and
bounded rendezvous, one bounds layer for config dataclasses and CLI numbers, network files checked
on load, the `bcm` error boundary, and one YAML loader. Ends with the probe: bad inputs and faults
across every command, each giving one line and a non-zero exit, never a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_BCM

from bcmcore import cli, dist
from bcmcore.config import ConfigError, UserError, from_dict, load_yaml
from bcmcore.metrics.spec import load_spec
from bcmcore.nets import ModelConfig, NetConfig, build_model, save_network
from bcmcore.paths import NAME_PATTERN, check_name, inside
from bcmcore.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def bcm(argv, capsys):
    """Run `bcm argv` in this process -> (exit code, stderr)."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A tiny untrained bcm network file (2-d vectors)."""
    path = tmp_path_factory.mktemp("net") / "net.pt"
    save_network(path, build_model(from_dict(ModelConfig, TINY_BCM)), 0, {})
    return path


def rewrite(src, dst, edit):
    """A copy of network file `src` with `edit(dict)` applied."""
    d = torch.load(src, weights_only=True)
    edit(d)
    torch.save(d, dst)
    return dst


# ---------------------------------------------------------------------------- 1. one path rule


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ".hidden", "-flag", "", "x" * 65])
def test_a_name_that_would_leave_its_folder_is_refused(name):
    with pytest.raises(ConfigError, match="not a valid name"):
        check_name(name, "models[0].name")


@pytest.mark.parametrize("name", ["1-step", "bcm", "demo-nfe2", "w1.5", "ict_cifar"])
def test_the_names_the_presets_use_pass(name):
    assert check_name(name, "x") == name


def test_schema_identifiers_are_a_subset_of_the_name_rule():
    """Experiment / dataset names (the schema's ^[a-z][a-z0-9_]*$) are valid file-name parts."""
    import re

    schema = (REPO / "workflow/schemas/config.schema.yaml").read_text()
    assert '"^[a-z][a-z0-9_]*$"' in schema
    for name in ("a", "ict_cifar10", "z9_"):
        assert re.fullmatch(NAME_PATTERN, name)


def test_inside_refuses_paths_that_escape_the_output_folder(tmp_path):
    assert inside(tmp_path, "grids", "a-b.png") == (tmp_path / "grids/a-b.png").resolve()
    with pytest.raises(UserError, match="outside the output folder"):
        inside(tmp_path, "grids", "../../x.png")
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(UserError, match="outside the output folder"):
        inside(tmp_path, "link", "x.png")


def test_an_eval_spec_sampler_name_with_dotdot_stops_before_anything_is_written(tmp_path):
    """acea26b: the sweep wrote its grid PNG to out/grids/<model>-<name>.png, outside --out."""
    spec = {
        "dataset": "x",
        "models": [
            {"name": "m", "network": "n.pt", "kind": "bcm", "samplers": [{"sampler": "onestep"}]}
        ],
    }
    spec["models"][0]["samplers"][0]["name"] = "../../../escaped"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"samplers\[0\]\.name: '../../../escaped'"):
        load_spec(path)


# ------------------------------------------------------------------ 2. distributed start-up


def test_a_stray_world_size_fails_fast_with_the_variables_named(tmp_path):
    """acea26b: `WORLD_SIZE=2 bcm sample` waited 30 minutes in silence for the other rank."""
    port = dist.free_port()
    env = dict(
        os.environ,
        WORLD_SIZE="2",
        RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        BCM_RENDEZVOUS_TIMEOUT="2",
        PYTHONPATH=str(REPO),
    )
    code = "from bcmcore import dist; dist.init('cpu')"
    res = subprocess.run(
        [sys.executable, "-c", f"from bcmcore.cli import run_command; import sys; "
         f"sys.exit(run_command('sample', lambda a: exec({code!r}), []))"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert (
        "[dist] rank 0 of 2 (gloo) from WORLD_SIZE=2, RANK=0" in res.stderr
    )  # said before waiting
    assert "waiting up to 2 s" in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("bcm sample: error: rank 0 of 2: the other ranks did not join")
    assert "WORLD_SIZE=2" in last and "BCM_RENDEZVOUS_TIMEOUT" in last
    assert "Traceback" not in res.stderr


def test_the_rendezvous_timeout_is_checked(monkeypatch):
    monkeypatch.setenv("BCM_RENDEZVOUS_TIMEOUT", "soon")
    with pytest.raises(UserError, match="BCM_RENDEZVOUS_TIMEOUT: expected a positive number"):
        dist.rendezvous_timeout()
    monkeypatch.delenv("BCM_RENDEZVOUS_TIMEOUT")
    assert dist.rendezvous_timeout() == dist.RENDEZVOUS_DEFAULT_S


def test_only_dist_calls_torch_distributed():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "bcmcore").rglob("*.py")
        if p.name != "dist.py"
        and "torch.distributed" in p.read_text().replace("`", "")
        and "import torch.distributed" in p.read_text()
    ]
    assert offenders == []


# ------------------------------------------------------------------------- 3. bounds layer


@pytest.mark.parametrize(
    "cls, where, data, message",
    [
        (ModelConfig, "model", {"sigma_min": 100.0}, "model.sigma_min: expected less than sigma_max"),
        (ModelConfig, "model", {"sigma_data": 0}, "model.sigma_data: expected a number > 0"),
        (ModelConfig, "model", {"net": {"channels": 0}}, "model.net.channels: expected a number > 0"),
        (ModelConfig, "model", {"net": {"channels": -8}}, "model.net.channels"),
        (ModelConfig, "model", {"net": {"head_channels": 0}}, "model.net.head_channels"),
        (ModelConfig, "model", {"net": {"ch_mult": [2, 0]}}, r"model.net.ch_mult\[1\]"),
        (ModelConfig, "model", {"net": {"dropout": 1.0}}, "model.net.dropout: expected a number >= 0 and < 1"),
        (ModelConfig, "model", {"net": {"num_classes": -1}}, "model.net.num_classes"),
        (TrainConfig, "train", {"betas": [0.9, 1.0]}, r"train.betas\[1\]: expected a number >= 0 and < 1"),
        (TrainConfig, "train", {"betas": [-0.1, 0.9]}, r"train.betas\[0\]"),
        (TrainConfig, "train", {"eps": 0}, "train.eps: expected a number > 0"),
        (TrainConfig, "train", {"eps": -1e-8}, "train.eps"),
        (TrainConfig, "train", {"weight_decay": -1}, "train.weight_decay"),
        (TrainConfig, "train", {"batch_gpu": 0}, "train.batch_gpu"),
    ],
)  # fmt: skip
def test_numbers_that_make_no_sense_are_refused_naming_the_key(cls, where, data, message):
    """acea26b: sigma_min > sigma_max trained and sampled to exit 0; the others crashed later."""
    with pytest.raises(ConfigError, match=message):
        from_dict(cls, data, where)


def test_bounds_hold_for_configs_built_in_code_too():
    with pytest.raises(ConfigError, match="head_channels"):
        NetConfig(head_channels=0)
    with pytest.raises(ConfigError, match="sigma_min"):
        ModelConfig(sigma_min=2.0, sigma_max=1.0)


def test_every_preset_passes_the_bounds():
    from bcmcore import presets
    from bcmcore.train.config import parse_run_config

    checked = 0
    for preset in (*presets.PRESETS, presets.DEMO):
        for exp in presets.experiments(preset):
            parse_run_config(presets.run_config(preset, exp))  # raises on a bound a preset breaks
            checked += 1
    assert checked >= 20  # every preset's trained experiments were read, none skipped


def test_network_files_with_non_finite_weights_or_a_wrong_structure_are_refused(net, tmp_path):
    """acea26b: a NaN network loaded and gave black images; a list state_dict a TypeError."""
    from bcmcore.nets import load_network

    def nan(d):
        k = next(iter(d["state_dict"]))
        d["state_dict"][k][0] = float("nan")

    bad = rewrite(net, tmp_path / "nan.pt", nan)
    with pytest.raises(UserError, match="non-finite values"):
        load_network(bad)
    bad = rewrite(net, tmp_path / "list.pt", lambda d: d.update(state_dict=[1, 2]))
    with pytest.raises(UserError, match="'state_dict' is list, expected dict"):
        load_network(bad)
    load_network(net)  # the good one loads


def test_float_pixels_are_refused_where_uint8_is_expected(tmp_path):
    from bcmcore.runner import load_inputs

    path = tmp_path / "x.npz"
    np.savez(path, images=np.random.rand(2, 8, 8, 3).astype(np.float32))
    with pytest.raises(UserError, match="expected uint8 pixels 0..255, got dtype float32"):
        load_inputs(input=str(path))


# ---------------------------------------------------------------------------- 5. YAML loader


def test_duplicate_yaml_keys_are_an_error_naming_file_and_line(tmp_path):
    """acea26b: the last value silently won."""
    path = tmp_path / "c.yaml"
    path.write_text("datasets:\n  demo:\n    enabled: true\n    enabled: false\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: duplicate key 'enabled' \(first on line 3\)"):
        load_yaml(path)


def test_no_yaml_file_is_read_around_the_one_loader():
    hits = []
    for p in [*(REPO / "bcmcore").rglob("*.py"), *(REPO / "workflow").rglob("*.smk")]:
        text = p.read_text()
        if p.name != "config.py" and ("yaml.safe_load(" in text and ".read_text()" in text):
            hits.append(str(p.relative_to(REPO)))
    assert hits == []


# ------------------------------------------------------------------------ 4. error boundary


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "commands", lambda: {"eval": interrupted})
    monkeypatch.setattr(cli, "_own_module", lambda c: {})
    rc, err = bcm(["eval"], capsys)
    assert rc == 130 and err.strip() == "bcm eval: interrupted (files already complete are intact)"


def test_a_run_lock_holding_other_json_is_held_not_a_traceback(tmp_path):
    from bcmcore import runlock

    (tmp_path / runlock.NAME).write_text("[1, 2]")
    assert runlock.read(tmp_path)["unreadable"] is True
    assert runlock.read_record(tmp_path / runlock.NAME) == {}


# ------------------------------------------------------------------------------- 6. the probe


def _files(tmp_path):
    """Bad inputs written once: a NaN network, a text file posing as one, float pixels, specs."""
    from bcmcore.cli import _args  # noqa: F401  (the checked number types)

    d = {"dir": tmp_path, "file": tmp_path / "a-file.txt"}
    d["file"].write_text("not a directory")
    d["garbage"] = tmp_path / "garbage.pt"
    d["garbage"].write_text("hello")
    d["floats"] = tmp_path / "floats.npz"
    np.savez(d["floats"], images=np.random.rand(2, 8, 8, 3).astype(np.float32))
    spec = {"dataset": str(tmp_path), "features": {"kind": "raw"}, "num_samples": 8}
    model = {"name": "m", "network": "n.pt", "kind": "bcm", "samplers": [{"sampler": "onestep"}]}

    def spec_file(name, **change):
        s = json.loads(json.dumps({**spec, "models": [model]}))
        for k, v in change.items():
            if k.startswith("model_"):
                s["models"][0][k[6:]] = v
            else:
                s[k] = v
        path = tmp_path / name
        path.write_text(json.dumps(s))
        return path

    d["spec_dotdot"] = spec_file(
        "dotdot.json", model_samplers=[{"sampler": "onestep", "name": "../../x"}]
    )
    d["spec_slash"] = spec_file("slash.json", model_name="a/b")
    d["spec_zero"] = spec_file("zero.json", num_samples=0)
    d["spec_quality"] = spec_file("quality.json", jpeg_quality=200)
    d["spec_times"] = spec_file("times.json", model_inversions=[{"times": [-1.0, 80.0]}])
    d["spec_steps"] = spec_file("steps.json", model_samplers=[{"sampler": "onestep", "steps": 3}])
    d["spec_dup"] = tmp_path / "dup.yaml"
    d["spec_dup"].write_text("dataset: x\nnum_samples: 8\nnum_samples: 9\nmodels: []\n")
    d["spec_list"] = tmp_path / "list.yaml"
    d["spec_list"].write_text("- dataset: x\n")
    d["spec_tab"] = tmp_path / "tab.yaml"
    d["spec_tab"].write_text("dataset: x\n\tmodels: []\n")
    d["launcher_dup"] = tmp_path / "launcher-dup.yaml"
    d["launcher_dup"].write_text("executor: local\nexecutor: slurm\n")
    d["launcher_list"] = tmp_path / "launcher-list.yaml"
    d["launcher_list"].write_text("- executor: local\n")
    for name, change in {
        "run_sigma": {"model": {**TINY_BCM, "sigma_min": 100.0}},
        "run_head": {"model": {**TINY_BCM, "net": {**TINY_BCM["net"], "head_channels": 0}}},
        "run_width": {"model": {**TINY_BCM, "net": {**TINY_BCM["net"], "channels": -4}}},
        "run_betas": {"train": {"betas": [0.9, 1.0]}},
        "run_eps": {"train": {"eps": 0.0}},
    }.items():
        run = tmp_path / name
        run.mkdir()
        cfg = {"model": TINY_BCM, "loss": {"kind": "bct"}, "data": {"shards": "x"}, **change}
        (run / "config.json").write_text(json.dumps(cfg))
        d[name] = run
    d["run_list"] = tmp_path / "run_list"
    d["run_list"].mkdir()
    (d["run_list"] / "config.json").write_text("[1, 2]")
    return d


# (case, argv with {placeholders}, env, exit code, the message's key words)
PROBE = [
    ("sample: missing network", "sample --network {dir}/none.pt --out {dir}/o", {}, 2, "network file not found"),
    ("sample: --batch 0", "sample --network {net} --out {dir}/o --batch 0", {}, 2, "expected a positive integer, got '0'"),
    ("sample: --grid -1", "sample --network {net} --out {dir}/o --grid -1", {}, 2, "expected an integer >= 0"),
    ("sample: --seeds nan", "sample --network {net} --out {dir}/o --seeds nan", {}, 2, "expected numbers and ranges"),
    ("sample: --device cuda without CUDA", "sample --network {net} --out {dir}/o --device cuda", {}, 2, "CUDA is not available"),
    ("sample: NaN weights", "sample --network {nan} --out {dir}/o", {}, 2, "non-finite values"),
    ("sample: state_dict a list", "sample --network {listsd} --out {dir}/o", {}, 2, "'state_dict' is list"),
    ("sample: text file as network", "sample --network {garbage} --out {dir}/o", {}, 2, "not a network file: neither a torch.save file nor .safetensors"),
    ("sample: --out under a file", "sample --network {net} --out {file}/o", {}, 2, "a-file.txt"),
    ("sample: WORLD_SIZE=2, no MASTER_ADDR", "sample --network {net} --out {dir}/o", {"WORLD_SIZE": "2"}, 2, "MASTER_ADDR is not set"),
    ("sample: RANK >= WORLD_SIZE", "sample --network {net} --out {dir}/o", {"WORLD_SIZE": "2", "RANK": "5"}, 2, "0 <= RANK < WORLD_SIZE"),
    ("sample: WORLD_SIZE=two", "sample --network {net} --out {dir}/o", {"WORLD_SIZE": "two"}, 2, "expected integers in WORLD_SIZE=two"),
    ("sample: bad rendezvous timeout", "sample --network {net} --out {dir}/o", {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "BCM_RENDEZVOUS_TIMEOUT": "0"}, 2, "BCM_RENDEZVOUS_TIMEOUT: expected a positive number"),
    ("invert: --num-steps 0", "invert --network {net} --out {dir}/o --input {floats} --num-steps 0", {}, 2, "expected a positive integer"),
    ("invert: float pixels", "invert --network {net} --out {dir}/o --input {floats} --steps 0.002,80", {}, 2, "expected uint8 pixels"),
    ("invert: missing input", "invert --network {net} --out {dir}/o --input {dir}/none.npz", {}, 2, "expected an existing .npz"),
    ("invert: text file as .npz", "invert --network {net} --out {dir}/o --input {garbage_npz}", {}, 2, "not a readable .npz"),
    ("edit: --mask-frac 1.5", "edit inpaint --network {net} --out {dir}/o --input {floats} --mask-frac 1.5", {}, 2, "expected a fraction in [0, 1]"),
    ("edit: --quality 0", "edit jpeg --network {net} --out {dir}/o --input {floats} --quality 0", {}, 2, "expected a JPEG quality in 1..95"),
    ("edit: --w -1", "edit class --network {net} --out {dir}/o --input {floats} --w -1", {}, 2, "expected a number >= 0"),
    ("edit-rate: --limit 0", "edit-rate --network {net} --shards {dir} --out {dir}/o --limit 0", {}, 2, "expected a positive integer"),
    ("edit-rate: --steps -3", "edit-rate --network {net} --shards {dir} --out {dir}/o --steps -3", {}, 2, "expected a positive integer"),
    ("eval: sampler name ../../x", "eval --spec {spec_dotdot} --out {dir}/o", {}, 2, "not a valid name"),
    ("eval: model name a/b", "eval --spec {spec_slash} --out {dir}/o", {}, 2, "models[0].name: 'a/b' is not a valid name"),
    ("eval: num_samples 0", "eval --spec {spec_zero} --out {dir}/o", {}, 2, "spec.num_samples: expected a number > 0"),
    ("eval: jpeg_quality 200", "eval --spec {spec_quality} --out {dir}/o", {}, 2, "spec.jpeg_quality"),
    ("eval: negative inversion time", "eval --spec {spec_times} --out {dir}/o", {}, 2, "times[0]: expected a number >= 0"),
    ("eval: onestep given steps", "eval --spec {spec_steps} --out {dir}/o", {}, 2, "steps: only heun (grid points) and igct (1 or 2) take it"),
    ("eval: duplicate YAML key", "eval --spec {spec_dup} --out {dir}/o", {}, 2, "dup.yaml:3: duplicate key 'num_samples'"),
    ("eval: spec is a list", "eval --spec {spec_list} --out {dir}/o", {}, 2, "expected a mapping"),
    ("eval: tab in spec", "eval --spec {spec_tab} --out {dir}/o", {}, 2, "tab.yaml:2: not valid YAML"),
    ("eval: --num-samples -5", "eval --spec {spec_zero} --out {dir}/o --num-samples -5", {}, 2, "expected a positive integer"),
    ("tune: --budget 0", "tune --spec {spec_zero} --out {dir}/o --budget 0", {}, 2, "expected a positive integer"),
    ("tune: bad name in spec", "tune --spec {spec_dotdot} --out {dir}/o", {}, 2, "not a valid name"),
    ("import: missing checkpoint", "import {dir}/none.pt --format bcm-ict-torch --out {dir}/o.pt", {}, 2, "checkpoint file not found"),
    ("import: unknown format", "import {garbage} --format other --out {dir}/o.pt", {}, 2, "unknown checkpoint format"),
    ("import: --resolution 0", "import {garbage} --format bcm-ict-torch --out {dir}/o.pt --resolution 0", {}, 2, "expected a positive integer"),
    ("import: text file as checkpoint", "import {garbage} --format bcm-ict-torch --out {dir}/o.pt", {}, 2, "garbage.pt"),
    ("train: sigma_min > sigma_max", "train --run-dir {run_sigma} --dry-run", {}, 2, "model.sigma_min: expected less than sigma_max"),
    ("train: head_channels 0", "train --run-dir {run_head} --dry-run", {}, 2, "model.net.head_channels"),
    ("train: negative width", "train --run-dir {run_width} --dry-run", {}, 2, "model.net.channels"),
    ("train: Adam beta2 = 1", "train --run-dir {run_betas} --dry-run", {}, 2, "train.betas[1]"),
    ("train: Adam eps 0", "train --run-dir {run_eps} --dry-run", {}, 2, "train.eps"),
    ("train: config.json a list", "train --run-dir {run_list} --dry-run", {}, 2, "expected a mapping"),
    ("train: bad config under WORLD_SIZE=2 (checked before any wait)", "train --run-dir {run_sigma}", {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, 2, "model.sigma_min"),
    ("prep: --out under a file", "prep gmm2d --out {file}/shards --workers 1", {}, 2, "a-file.txt"),
    ("prep: --seed -1", "prep gmm2d --out {dir}/s --seed -1", {}, 2, "expected an integer >= 0"),
    ("launch: --deadline-min 0", "launch --deadline-min 0 -- sample", {}, 2, "expected a number > 0"),
    ("launch: duplicate key in launcher", "launch --launcher {launcher_dup} -- check", {}, 2, "launcher-dup.yaml:2: duplicate key 'executor'"),
    ("launch: launcher is a list", "launch --launcher {launcher_list} -- check", {}, 2, "expected a mapping of launcher settings"),
    ("bench: train --batch 0", "bench train --batch 0", {}, 2, "expected a positive integer"),
    ("bench: loader --mfu -1", "bench loader --mfu -1", {}, 2, "expected a number > 0"),
    ("check: gpu --budget-s -1", "check gpu --budget-s -1", {}, 2, "expected a number > 0"),
]  # fmt: skip


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory, net):
    d = _files(tmp_path_factory.mktemp("probe"))
    d["net"] = net
    d["nan"] = rewrite(
        net,
        d["dir"] / "nan.pt",
        lambda x: x["state_dict"][next(iter(x["state_dict"]))].fill_(float("inf")),
    )
    d["listsd"] = rewrite(net, d["dir"] / "listsd.pt", lambda x: x.update(state_dict=[1]))
    d["garbage_npz"] = d["dir"] / "garbage.npz"
    d["garbage_npz"].write_text("hello")
    return d  # fmt: skip


@pytest.mark.parametrize("case, argv, env, code, message", PROBE, ids=[c[0] for c in PROBE])
def test_probe(case, argv, env, code, message, probe_files, monkeypatch, capsys):
    """Every case: the expected exit code, one line naming the problem, no traceback, and nothing
    written outside the probe's folder."""
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(probe_files["dir"])
    before = set(Path(probe_files["dir"]).parent.iterdir())
    rc, err = bcm(argv.format(**probe_files).split(), capsys)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[dist]")]
    print(f"PROBE | {case} | {rc} | {lines[-1] if lines else ''}")
    assert rc == code, err
    assert "Traceback" not in err
    assert message in err, err
    assert len([ln for ln in lines if ln.startswith("bcm ") or ln.startswith("usage")]) >= 1
    assert set(Path(probe_files["dir"]).parent.iterdir()) == before
    dist.shutdown()


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"means": [[0, 0], [1, 1]], "stds": [-0.1, 0.2], "weights": [0.5, 0.5]},
            "stds: expected numbers >= 0",
        ),
        (
            {"means": [[0, 0], [1]], "stds": [0.1, 0.2], "weights": [0.5, 0.5]},
            "means: expected K means of one dimension",
        ),
        (
            {"means": [[0, 0], [1, 1]], "stds": [0.1, 0.2], "weights": [0.5, 0.6]},
            "weights: expected numbers >= 0 summing to 1",
        ),
        (
            {"means": [[0, 0]], "stds": [0.1, 0.2], "weights": [1.0]},
            "got 1 means, 2 stds, 1 weights",
        ),
        (
            {"means": [[0, float("nan")]], "stds": [0.1], "weights": [1.0]},
            "expected finite numbers",
        ),
    ],
)
def test_a_mixture_that_cannot_exist_is_refused_naming_the_file(tmp_path, params, message, capsys):
    """A negative std used to be sampled as |std| while the exact denoiser used it squared."""
    import json

    from bcmcore import cli

    path = tmp_path / "p.json"
    path.write_text(json.dumps(params))
    out = tmp_path / "s"
    assert cli.main(["prep", "gmm2d", "--out", str(out), "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err
    assert not out.exists()
