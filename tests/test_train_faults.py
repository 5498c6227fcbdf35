"""Real faults during training and bad inputs to it: signals, leftovers of a kill, a model that does
not fit the data, a NaN setting, out of memory, a full disk. Each ends in one line and the right
exit code, and a rerun continues from an intact state."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from helpers import (
    TINY_CM,
    assert_same_state,
    final_state,
    make_run,
    run_and_kill,
    run_to_end,
    status_step,
    train_procs,
)

from bcmcore.config import ConfigError
from bcmcore.nets import ModelConfig, NetConfig, build_model, save_network
from bcmcore.train import training_loop
from bcmcore.train.checkpoint import find_states

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def bcm(*args, timeout=300, **kw):
    return subprocess.run(
        [sys.executable, "-m", "bcmcore", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        **kw,
    )


def one_line_error(res, code, *needles):
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr[-3000:])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_a_state_and_exits_128_plus_signal(tmp_path, shards, sig, code):
    steps = 12
    ref = make_run(tmp_path / "ref", shards, total_steps=steps, checkpoint_every=5)
    run = make_run(tmp_path / "run", shards, total_steps=steps, checkpoint_every=5)
    run_to_end(ref)
    proc, seen = train_procs(run)[0], []
    for line in proc.stdout:
        seen.append(line)
        if status_step(line) == 3:
            proc.send_signal(sig)
            break
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out
    assert "Traceback" not in out and f"{sig.name} at step" in out, out
    stopped = find_states(run)[-1][0]
    assert 3 <= stopped < steps and stopped % 5, out  # a state of its own, not a periodic one
    assert "resumed from training-state-" in run_to_end(run)
    assert_same_state(final_state(ref), final_state(run))  # the stop changed nothing


@pytest.mark.timeout(600)
def test_leftovers_of_a_kill_are_cleaned_and_stats_not_repeated(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, total_steps=12, checkpoint_every=3)
    run_and_kill(run, 8)  # states at 3 and 6; stats rows up to step 8
    partial = run / ".tmp-training-state-0000009.pt.abc123"  # what a kill mid-write leaves
    partial.write_bytes(b"partial")
    out = run_to_end(run)
    assert "resumed from training-state-0000006.pt" in out, out
    assert not list(run.glob(".tmp-*")), list(run.iterdir())
    steps = [json.loads(r)["step"] for r in (run / "stats.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)), steps  # each step once: rows 7, 8 of the killed run dropped


def test_leftover_temp_files_of_sample_grids_are_removed(tmp_path):
    net = NetConfig(arch="mlp", data_channels=2, channels=16, num_blocks=1)
    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    save_network(path, build_model(ModelConfig(kind="cm", net=net)), 1, {})
    out = tmp_path / "grids"
    out.mkdir()
    (out / ".tmp-samples.npz.k1ll3d").write_bytes(b"partial")
    (out / ".tmp-edit-jpeg.png.other").write_bytes(b"another command's")
    res = bcm("sample", "--network", path, "--out", out, "--seeds", "0-3", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob(".tmp-*")) == [".tmp-edit-jpeg.png.other"]


def test_model_that_does_not_fit_the_data_stops_before_step_0(tmp_path, shards):
    from bcmcore.cli.prep import prep

    digits = tmp_path / "digits"
    assert prep(["digits", "--out", str(digits), "--resolution", "16", "--workers", "1"]) == 0
    run = make_run(tmp_path / "mlp-on-images", digits, model=TINY_CM, loss={"kind": "ict"})
    with pytest.raises(ConfigError, match=r"arch mlp .* expects vectors of dim 2, but .*manifest"):
        training_loop(run)
    adm = {
        "kind": "cm",
        "net": {"arch": "adm", "data_channels": 3, "resolution": 16, "channels": 8, "ch_mult": [1]},
    }
    for name, data, needle in (
        ("adm-on-vectors", shards, "holds vector data of dim 2"),
        ("rgb-on-gray", digits, "holds 1-channel 16x16 images"),
    ):
        run = make_run(tmp_path / name, data, model=adm, loss={"kind": "ict"})
        with pytest.raises(ConfigError, match=needle):
            training_loop(run)
    assert not list(tmp_path.glob("*/training-state-*"))


def test_nan_learning_rate_in_config_json_is_one_line(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, lr=float("nan"))
    assert "NaN" in (run / "config.json").read_text()
    one_line_error(bcm("train", "--run-dir", run), 2, "train.lr: expected a finite number")


def _limit_memory():
    limit = 6 << 30  # address space: torch fits, the batch's first activation (16 GiB) does not
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.timeout(300)
def test_out_of_memory_names_the_setting_to_lower(tmp_path, shards):
    model = {"kind": "bcm", "net": {**TINY_CM["net"], "channels": 4096, "two_time": True}}
    run = make_run(tmp_path / "run", shards, model=model, batch=2**20, checkpoint_every=1)
    res = bcm("train", "--run-dir", run, preexec_fn=_limit_memory)
    one_line_error(res, 2, "out of memory", "lower train.batch_gpu")
    assert not find_states(run)


@pytest.mark.timeout(600)
@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_disk_full_names_the_file_and_a_rerun_resumes(tmp_path, shards):
    """A 1 MiB tmpfs (private mount namespace) fills after the first state; then 64 MiB, and rerun.
    A 1 MiB tmpfs (private mount namespace) fills after the first state; then 64 MiB, and rerun."""
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs none {tmp_path}"], capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr.decode()[-200:]}")
    src = make_run(tmp_path / "src", shards, total_steps=6, checkpoint_every=1)  # 0.36 MB states
    train = f"{sys.executable} -m bcmcore train --run-dir {tmp_path}/small/run"
    script = f"""
        mkdir -p {tmp_path}/small && mount -t tmpfs -o size=1m none {tmp_path}/small
        mkdir {tmp_path}/small/run && cp {src}/config.json {tmp_path}/small/run/
        {train} > {tmp_path}/first.out 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc
        ls {tmp_path}/small/run > {tmp_path}/first.ls
        mount -o remount,size=64m {tmp_path}/small
        {train} > {tmp_path}/second.out 2>&1; echo $? > {tmp_path}/second.rc
        ls {tmp_path}/small/run > {tmp_path}/second.ls
    """
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, timeout=500, check=True)
    read = lambda name: (tmp_path / name).read_text()
    err = read("first.err")
    assert read("first.rc").strip() == "2", (read("first.out"), err)
    assert "Traceback" not in err and "disk full" in err and f"{tmp_path}/small/run/" in err, err
    assert "MiB free on" in err, err
    assert "training-state-" in read("first.ls") and ".tmp-" not in read("first.ls")
    assert read("second.rc").strip() == "0", read("second.out")
    assert "resumed from training-state-" in read("second.out"), read("second.out")
    assert "network-final.pt" in read("second.ls")
