"""`bcm check gpu` / `make gpu-check`: the --cpu run end to end, the table, failures, presets."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from bcmcore.bench import gpu_check
from bcmcore.cli import main as bcm

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cpu_mode_runs_every_item_and_prints_one_table(tmp_path, capsys):
    assert bcm(["check", "gpu", "--cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("| check ") == 1  # one table
    rows = json.loads((tmp_path / "gpu-check.json").read_text())["rows"]
    checks = {r["check"] for r in rows}
    assert checks == {"tests", "resume", "sampling", "eval", "train"}
    assert all(not str(r["result"]).startswith("FAIL") for r in rows), rows
    train = [r for r in rows if r["check"] == "train" and r["result"] == "ok"]
    assert {r["item"] for r in train} == {n[0] for n in gpu_check.NETS}
    assert all(r["img_per_s"] > 0 for r in train)
    resume = next(r for r in rows if r["check"] == "resume")
    assert resume["result"] == "ok: bitwise identical"
    assert (tmp_path / "gpu-check.md").read_text().count("| train ") == len(
        [r for r in rows if r["check"] == "train"]
    )


def test_make_target_runs_the_command_with_args():
    p = subprocess.run(
        ["make", "-n", "gpu-check", "ARGS=--cpu"], cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert "-m bcmcore check gpu --cpu" in p.stdout


def test_without_cuda_the_gpu_mode_refuses_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(gpu_check.CheckFailed, match="no usable CUDA device"):
        gpu_check.run(out_dir=tmp_path)


def test_failures_become_rows_and_cuda_errors_stop_the_run():
    r = gpu_check._Run(torch.device("cpu"), budget_s=100)
    r.item("train", "net", lambda: 1 / 0)
    assert r.rows[-1]["result"].startswith("FAIL: ZeroDivisionError")
    r.item("train", "late", lambda: {"result": "ok"}, need_s=10**6)
    assert r.rows[-1]["result"] == "skipped: time budget"

    def cuda_error():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(gpu_check.CheckFailed, match="CUDA error in train boom"):
        r.item("train", "boom", cuda_error)
    table = gpu_check.format_table(r.rows)
    assert table.count("\n") == len(r.rows) + 1 and "FAIL: RuntimeError" in table


def test_presets_give_the_papers_networks():
    cifar = gpu_check.preset_config("cifar10", "igct")
    assert cifar["model"]["net"]["channels"] == 128 and cifar["model"]["net"]["num_classes"] == 10
    assert cifar["shape"] == (3, 32, 32) and cifar["loss"]["kind"] == "igct"
    adm = gpu_check.preset_config("imagenet64", "bcm_ft")
    assert adm["model"]["net"]["arch"] == "adm" and adm["shape"] == (3, 64, 64)
    assert adm["model"]["net"]["two_time_embed"] == "project"
    tiny = gpu_check.preset_config("imagenet64", "bcm_ft", tiny=True)
    assert tiny["shape"] == (3, 8, 8) and tiny["model"]["net"]["arch"] == "adm"


def test_a_row_in_a_child_process_and_its_time_limit():
    net = gpu_check.NETS[0]
    row = gpu_check.compiled_row(net, "fp32", timeout_s=300, cpu=True)
    assert row["result"] == "ok" and row["img_per_s"] > 0 and row["batch"] == 2
    late = gpu_check.compiled_row(net, "fp32", timeout_s=0.01, cpu=True)
    assert late["result"].startswith("skipped: not done within the time budget")
