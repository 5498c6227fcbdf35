"""`bcm bench train`: the real training step is timed and reported (figures are in the TRAIN
report)."""

import json

import pytest
import torch

from bcmcore.bench import bench_train
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
