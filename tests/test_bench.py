"""`bcm bench train`: the real training step is timed and reported (figures are in the TRAIN
report)."""

import json

import pytest
import torch

from bcmcore.bench.step import bench_train
from bcmcore.cli import main as bcm
from bcmcore.config import UserError


def test_bench_train_reports_throughput(tmp_path, capsys):
    rows = bench_train(
        "tiny",
        torch.device("cpu"),
        batch=16,
        steps=1,
        warmup=1,
        variants=["fp32", "bf16", "channels_last"],
    )
    assert [r["variant"] for r in rows] == [
        "fp32"
    ]  # bf16 autocast is CUDA-only, channels_last for images
    for r in rows:
        assert r["sec_per_step"] > 0 and r["img_per_s"] == pytest.approx(16 / r["sec_per_step"])
    out = tmp_path / "bench.json"
    assert (
        bcm(
            [
                "bench",
                "train",
                "--config",
                "tiny",
                "--batch",
                "8",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())[0]["batch"] == 8


def test_bench_unknown_config():
    with pytest.raises(UserError, match="--config: unknown config 'resnet'"):
        bench_train("resnet", torch.device("cpu"))


# ------------------------------------------------------------------ bcm bench train --vs (bench_vs)

VS_FAST = ["--batch", "16", "--steps", "1", "--warmup", "0", "--rounds", "2"]


def test_bench_vs_interleaves_two_workers_and_reports_b_over_a(tmp_path, capsys):
    """The real --vs path: two worker processes, rounds A B then B A, ratio = B/A of the reported
    times in every round, median and range over the rounds, each side's overrides applied."""
    import statistics

    from bcmcore.bench import vs as bench_vs

    out = tmp_path / "vs.json"
    argv = ["bench", "train", "--vs", "tiny@threads=1", "tiny@threads=1@net.channels=64@batch=8"]
    assert bcm(argv + VS_FAST + ["--out", str(out)]) == 0
    res = json.loads(out.read_text())
    a, b = res["sides"]["A"], res["sides"]["B"]
    assert (a["batch"], b["batch"]) == (16, 8)  # --batch, and B's own batch=8
    assert a["threads"] == b["threads"] == 1
    assert (
        a["config"]["model"]["net"]["channels"] == 128
        and b["config"]["model"]["net"]["channels"] == 64
    )
    assert b["params"] < a["params"]
    assert a["pid"] != b["pid"]  # one process per side
    assert a["code"] == b["code"] == str(bench_vs.THIS_TREE / "bcmcore")
    assert [r["side"] for r in res["runs"]] == ["A", "B", "B", "A"]  # the first side alternates
    assert [r["order"] for r in res["rounds"]] == ["AB", "BA"]
    ratios = []
    for row in res["rounds"]:
        times = {r["side"]: r["sec_per_step"] for r in res["runs"] if r["round"] == row["round"]}
        assert (row["A"], row["B"]) == (times["A"], times["B"])
        assert row["ratio"] == pytest.approx(row["B"] / row["A"])
        assert row["ratio_min"] == pytest.approx(row["B_min"] / row["A_min"])
        assert row["A_min"] <= row["A"] and row["B_min"] <= row["B"]
        ratios.append(row["ratio"])
    assert res["ratio"]["median"] == pytest.approx(statistics.median(ratios))
    assert (res["ratio"]["min"], res["ratio"]["max"]) == (min(ratios), max(ratios))
    printed = capsys.readouterr().out
    assert "tiny@threads=1@net.channels=64@batch=8" in printed
    assert f"B/A median {res['ratio']['median']:.3f}" in printed


@pytest.mark.parametrize(
    "side, needle",
    [
        ("tiny@net.chanels=64", "model.net.chanels"),
        ("tiny@foo=1", "'foo=1'"),
        ("tiny@train.batch=4", "'train.batch'"),
        ("tiny@threads=0", "threads expects a positive integer"),
        ("tiny@channels_last", "channels_last is for image nets"),
        ("nope", "unknown config 'nope'"),
    ],
)
def test_bench_vs_bad_side_is_one_error_naming_it(capsys, side, needle):
    assert bcm(["bench", "train", "--vs", "tiny", side] + VS_FAST) == 2
    err = capsys.readouterr().err
    assert f"--vs side B {side!r}" in err and needle in err, err


def test_bench_vs_baseline_tree_runs_side_a_with_that_trees_code(tmp_path, capsys):
    """--baseline-tree: side A's worker imports the baseline's bcmcore. The copy here is this
    tree's package with a marked time_steps (every round reports exactly 1.0 s/step), so A's
    times prove which code ran."""
    import shutil

    from bcmcore.bench import vs as bench_vs

    base = tmp_path / "base"
    shutil.copytree(bench_vs.THIS_TREE / "bcmcore", base / "bcmcore")
    marked = (
        "\n_timed = time_steps\n\n\ndef time_steps(*args):\n    _timed(*args)\n    return 1.0\n"
    )
    with open(base / "bcmcore" / "bench" / "step.py", "a") as f:
        f.write(marked)
    out = tmp_path / "vs.json"
    argv = ["bench", "train", "--baseline-tree", str(base), "--config", "tiny", "--out", str(out)]
    assert bcm(argv + VS_FAST) == 0
    res = json.loads(out.read_text())
    a, b = res["sides"]["A"], res["sides"]["B"]
    assert a["code"] == str(base / "bcmcore") and a["rev"] is None  # a copy: no git
    assert b["code"] == str(bench_vs.THIS_TREE / "bcmcore")
    assert a["spec"] == b["spec"] == "tiny"
    assert [(row["A"], row["A_min"]) for row in res["rounds"]] == [(1.0, 1.0)] * 2
    assert all(row["B"] != 1.0 and row["ratio"] == row["B"] for row in res["rounds"])
    assert bcm(["bench", "train", "--baseline-tree", str(tmp_path)] + VS_FAST) == 2
    assert "no bcmcore package there" in capsys.readouterr().err


OLD_LAYOUT = "acea26b"  # the last commit with bcmcore/bench.py and bcmcore/bench_worker.py


def test_bench_vs_baseline_tree_of_the_old_layout_runs_its_own_worker(tmp_path):
    """A checkout from before bcmcore/bench/ (bench.py, bench_worker.py, bench._setup) still
    serves as --baseline-tree: its own worker runs with its own code."""
    import subprocess

    from bcmcore.bench import vs as bench_vs

    base = tmp_path / "old"
    base.mkdir()
    tar = subprocess.run(
        ["git", "-C", str(bench_vs.THIS_TREE), "archive", OLD_LAYOUT, "bcmcore"],
        capture_output=True,
    )
    if tar.returncode:
        pytest.skip(f"commit {OLD_LAYOUT} not in this checkout's history")
    subprocess.run(["tar", "-x", "-C", str(base)], input=tar.stdout, check=True)
    assert bench_vs.worker_of(base) == base / "bcmcore" / "bench_worker.py"
    out = tmp_path / "vs.json"
    argv = ["bench", "train", "--baseline-tree", str(base), "--config", "tiny", "--out", str(out)]
    assert bcm(argv + VS_FAST) == 0
    a = json.loads(out.read_text())["sides"]["A"]
    assert a["code"] == str(base / "bcmcore")


def test_bench_config_of_the_demo():
    """digits/<experiment> is the demo's experiment (workflow/config/config.yaml) at its own
    train.batch."""
    from bcmcore import presets
    from bcmcore.bench.step import bench_config

    c, run = bench_config("digits/ict"), presets.run_config("digits", "ict")
    assert c["model"] == run["model"] and c["loss"] == run["loss"]
    assert c["batch"] == c["cpu_batch"] == run["train"]["batch"]
    net = run["model"]["net"]
    assert c["shape"] == (net["data_channels"], net["resolution"], net["resolution"])
