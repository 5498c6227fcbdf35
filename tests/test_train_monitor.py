"""Watching a run (bcmcore/train/monitor.py): a short run of the demo's iCT config writes
TensorBoard event files that TensorBoard's own reader reads back (scalars and the sample grid),
timestamped status lines with elapsed time and ETA, a fixed-seed EMA grid and a quick FID per
snapshot; the keys are runtime keys; wandb is an opt-in with a clear error."""

import datetime
import json
import re

import numpy as np
import pytest
from PIL import Image

from bcmcore import presets
from bcmcore.config import UserError
from bcmcore.train import identity
from bcmcore.train.loop import training_loop
from bcmcore.train.monitor import hms


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    """The demo's 8x8 digits shards (`bcm prep digits --resolution 8`, as the workflow runs it)."""
    from bcmcore.cli import main as bcm

    out = tmp_path_factory.mktemp("digits8") / "shards"
    assert bcm(["prep", "digits", "--out", str(out), "--workers", "1", "--resolution", "8"]) == 0
    return out


@pytest.fixture(scope="module")
def demo_run(digits8, tmp_path_factory, one_thread):
    """8 steps of the demo's iCT stage (its model, loss and data), snapshots every 4 steps with a
    quick FID of 128 samples in demo-classifier features."""
    cfg = presets.run_config("digits", "ict")
    cfg["data"]["shards"] = str(digits8)
    cfg["train"].update(
        total_steps=8,
        batch=16,
        status_every=2,
        checkpoint_every=4,
        snapshot_every=4,
        snapshot_grid=16,
        snapshot_fid=128,
    )
    run = tmp_path_factory.mktemp("monitor") / "ict"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg))
    started = datetime.datetime.now().astimezone()
    training_loop(run, "cpu")
    return run, started, datetime.datetime.now().astimezone()


@pytest.mark.timeout(240)
def test_quick_fid_on_two_ranks_trains_the_demo_classifier_without_waiting_for_the_others(
    digits8, tmp_path
):
    """Rank 0 takes the snapshot (grid, quick FID) while rank 1 is already in the next step's
    gradient all-reduce. On 649de91 the demo classifier, trained on first use, ended with a barrier:
    rank 0 waited there and rank 1 in the all-reduce, both until the 30-minute collective timeout
    (the Slurm workflow test hung at the first snapshot)."""
    import shutil
    import subprocess

    from helpers import train_procs

    shards = tmp_path / "shards"  # no demo-classifier.pt: the snapshot trains it
    shutil.copytree(digits8, shards, ignore=shutil.ignore_patterns("demo-classifier*", "fid-*"))
    cfg = presets.run_config("digits", "ict")
    cfg["data"]["shards"] = str(shards)
    cfg["train"].update(total_steps=4, batch=16, status_every=2, checkpoint_every=2,
                        snapshot_every=2, snapshot_grid=4, snapshot_fid=128)  # fmt: skip
    run = tmp_path / "ict"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg))
    procs = train_procs(run, world=2)
    try:
        out = procs[0].communicate(timeout=120)[0]
        procs[1].wait(timeout=60)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"2-rank training with a quick FID still running after 120 s:\n"
                    f"{(run / 'log.txt').read_text()[-2000:]}")  # fmt: skip
    assert [p.returncode for p in procs] == [0, 0], out
    fid_rows = [r for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines())
                if "snapshot_fid" in r]  # fmt: skip
    assert [r["step"] for r in fid_rows] == [2, 4], out
    assert (shards / "demo-classifier.pt").is_file() and (run / "network-final.pt").is_file()


def test_tensorboard_events_read_back_by_tensorboard(demo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = demo_run
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "loss/loss",
        "train/lr",
        "train/grad_norm",
        "perf/kimg_per_s",
        "perf/peak_mem_gb",
        "eval/snapshot_fid",
    ):
        assert tag in tags["scalars"], tags["scalars"]
    stats = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    rows = [r for r in stats if "loss" in r]
    # the event file holds the stats.jsonl values, step for step
    loss = acc.Scalars("loss/loss")
    assert [e.step for e in loss] == [r["step"] for r in rows] == [2, 4, 6, 8]
    assert np.allclose([e.value for e in loss], [r["loss"] for r in rows], rtol=1e-6)
    assert all(e.value > 0 for e in acc.Scalars("train/grad_norm"))
    fid_rows = [r for r in stats if "snapshot_fid" in r]
    fids = acc.Scalars("eval/snapshot_fid")
    assert [e.step for e in fids] == [r["step"] for r in fid_rows] == [4, 8]
    assert np.allclose([e.value for e in fids], [r["snapshot_fid"] for r in fid_rows])
    assert all(r["fid_samples"] == 128 and r["fid_features"].startswith("demo-") for r in fid_rows)
    # the grid: the same PNG as grid-<step>.png, decoded from the event file
    images = acc.Images("samples")
    assert [e.step for e in images] == [4, 8]
    import io

    with Image.open(io.BytesIO(images[-1].encoded_image_string)) as shown:
        with Image.open(run / "grid-0000008.png") as png:
            assert np.array_equal(np.asarray(shown.convert("L")), np.asarray(png.convert("L")))
            assert png.size == (4 * 33 + 1, 4 * 33 + 1)  # 16 digits of 8x8, shown 4x


def test_snapshot_grid_is_fixed_seed_ema_samples(demo_run):
    """The grid is the EMA network's samples of seeds 0..15: the same images as generating them
    again from the snapshot file (so a later grid differs only because the weights changed)."""
    from bcmcore.images import save_grid
    from bcmcore.nets import load_network
    from bcmcore.train.monitor import generate_uint8

    run, _, _ = demo_run
    model, _ = load_network(run / "network-snapshot-0000008.pt")
    again = run.parent / "again.png"
    save_grid(again, generate_uint8(model, np.arange(16), "cpu", batch=5))
    assert again.read_bytes() == (run / "grid-0000008.png").read_bytes()
    assert (run / "grid-0000004.png").read_bytes() != (run / "grid-0000008.png").read_bytes()


def test_status_lines_carry_timestamp_elapsed_and_eta(demo_run):
    run, started, ended = demo_run
    lines = [ln for ln in (run / "log.txt").read_text().splitlines() if "] step " in ln]
    assert len(lines) == 4, lines
    pat = re.compile(
        r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] step (\d+)/8 \([\d.]+%\) .* "
        r"elapsed (\d+:\d\d:\d\d)  eta (\d+:\d\d:\d\d)$"
    )
    for line in lines:
        m = pat.match(line)
        assert m, line
        when = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=started.tzinfo)
        # the wall clock, to the second
        assert started.replace(microsecond=0) <= when <= ended, (line, started, ended)
    assert lines[-1].endswith("eta 0:00:00")


def test_hms():
    assert hms(0) == "0:00:00" and hms(3725.4) == "1:02:05" and hms(90061) == "1d 1:01:01"


def test_watching_keys_are_runtime_keys():
    for key in ("tensorboard", "wandb", "snapshot_grid", "snapshot_fid", "snapshot_fid_features"):
        assert identity.is_runtime("train", key)


def test_wandb_without_the_package_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    from bcmcore.train.monitor import open_wandb

    real = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(UserError, match=r"train.wandb: 'offline' needs the wandb package"):
        open_wandb("offline", "p", tmp_path, {}, 0)


def test_bad_watching_keys_name_the_key():
    from bcmcore.config import ConfigError
    from bcmcore.train.config import TrainConfig

    with pytest.raises(ConfigError, match="train.wandb"):
        TrainConfig(wandb="yes")
    with pytest.raises(ConfigError, match="train.snapshot_fid_features"):
        TrainConfig(snapshot_fid_features="vgg")
