"""`bcm bench loader`: the arithmetic of GPU need vs loader supply (no timing is asserted)."""

import csv

import pytest
import torch
import yaml

from bcmcore import presets
from bcmcore.bench import loader_need
from bcmcore.cli import main as bcm

# a real small config of the `bcm bench` form: the MLP consistency model trained by iCT
TINY_ICT = dict(
    model={"kind": "cm", "net": {"arch": "mlp", "data_channels": 2, "channels": 64}},
    loss={"kind": "ict"},
    shape=(2,),
)


def test_need_ratio_and_verdict_arithmetic():
    assert loader_need.gpu_need(989e12 * 0.4 / 1000) == pytest.approx(1000)
    assert loader_need.gpu_need(1e9, peak=1e12, mfu=0.5) == pytest.approx(500)
    # one core each, the training process keeps one of cpus_per_task
    assert loader_need.delivered(100.0, 8, 8) == (700.0, 7)
    assert loader_need.delivered(100.0, 4, 8) == (400.0, 4)
    assert loader_need.delivered(100.0, 4, 8, paired=True) == (200.0, 4)  # x and x_src decoded
    assert loader_need.verdict(2.0).startswith("ok") and loader_need.verdict(1.99).startswith("STA")
    assert loader_need.verdict(2.5, bar=3).startswith("STARVES")


def test_flops_per_image_counts_every_pass_and_divides_by_batch():
    from torch.utils.flop_counter import FlopCounterMode

    from bcmcore.config import from_dict
    from bcmcore.nets import ModelConfig, build_model

    model = build_model(from_dict(ModelConfig, TINY_ICT["model"], "model"))
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 2), torch.ones(1))
    forward = counter.get_total_flops()
    per_image = loader_need.flops_per_image(TINY_ICT, batch=1)
    # iCT: student forward + backward (<= 2 forwards: no input gradient) + teacher forward
    assert 3 * forward < per_image <= 4 * forward
    assert loader_need.flops_per_image(TINY_ICT, batch=3) == pytest.approx(per_image)


def test_rows_use_the_presets_loader_workers_and_pairing():
    rates = {(32, False): (1000.0, 1.0, 1.0), (64, False): (1000.0, 1.0, 1.0)}
    rates[256, False] = (100.0, 90.0, 110.0)
    flops = {"cifar10/ict": 1e11, "cifar10/igct": 1e11, "ffhq64/bcm_scratch": 1e12}
    flops["lsun256/bcm_scratch"] = 4e12
    rows = loader_need.need_rows(list(flops), rates, flops, peak=1e15, mfu=0.5)
    ict, igct, ffhq, lsun = rows
    assert (ict["res"], ict["loader"], ict["workers"]) == (32, "shards", 4)  # num_workers 4
    assert ict["gpu_need_img_s"] == pytest.approx(5000)
    assert ict["delivered_img_s"] == pytest.approx(4000) and ict["ratio"] == pytest.approx(0.8)
    assert ict["verdict"].startswith("STARVES")
    assert igct["delivered_img_s"] == pytest.approx(2000)  # paired: x and x_src
    # 8 workers, cpus_per_task 8 - 1 for the training process
    assert (ffhq["loader"], ffhq["workers"], ffhq["delivered_img_s"]) == ("shards", 7, 7000)
    assert ffhq["ratio"] == pytest.approx(14) and ffhq["verdict"].startswith("ok")
    assert lsun["res"] == 256 and lsun["ratio"] == pytest.approx(700 / 125)
    low = loader_need.need_rows(["lsun256/bcm_scratch"], rates, {"lsun256/bcm_scratch": 1e12})
    assert low[0]["ratio"] == pytest.approx(700 / 395.6) and low[0]["verdict"].startswith("STA")


def test_in_memory_rows_are_gathered_by_the_training_process():
    run = presets.run_config("cifar10", "igct")
    run["data"]["in_memory"] = True
    rates = {(32, True): (20000.0, 1.0, 1.0)}
    (row,) = loader_need.need_rows(
        ["cifar10/igct"], rates, {"cifar10/igct": 1e11}, runs={"cifar10/igct": run}
    )
    assert (row["loader"], row["workers"]) == ("in memory", 0)
    assert row["delivered_img_s"] == pytest.approx(10000)  # paired: two gathers per sample


def test_train_cpus_reads_the_datasets_launch_override(tmp_path):
    ds, cfg = presets.load("ffhq64")
    assert loader_need.train_cpus("ffhq64") == 8  # cluster/slurm/stages.yaml
    cfg["datasets"][ds]["launch"] = {"train": {"cpus_per_task": 3}}
    path = tmp_path / "ffhq_small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert loader_need.train_cpus(str(path)) == 3


def test_bench_loader_command_writes_consistent_csv(tmp_path, capsys):
    flops_csv = tmp_path / "flops.csv"
    flops_csv.write_text("preset,experiment,gflop_per_img\ncifar10,ict,100.0\n")
    out = tmp_path / "loader.csv"
    argv = ["bench", "loader", "--experiments", "cifar10/ict", "--rounds", "1"]
    assert bcm(argv + ["--flops-from", str(flops_csv), "--mfu", "0.5", "--out", str(out)]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert float(row["gpu_need_img_s"]) == pytest.approx(989e12 * 0.5 / 100e9)
    assert (row["loader"], row["workers"]) == ("shards", "4")
    assert float(row["delivered_img_s"]) == pytest.approx(4 * float(row["img_s_per_worker"]))
    ratio = float(row["delivered_img_s"]) / float(row["gpu_need_img_s"])
    assert float(row["ratio"]) == pytest.approx(ratio)
    assert row["verdict"] == loader_need.verdict(ratio)
    assert "| cifar10 | ict | 32 | shards | 100.0 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["cifar10"], "--experiments: expected <preset>/<experiment>, got 'cifar10'"),
        (["cifar10/nope"], "preset 'cifar10': no experiment 'nope'"),
        (["cifar10/ict", "--mfu", "0"], "argument --mfu: expected a number > 0, got '0'"),
        (
            ["cifar10/ict", "--rounds", "0"],
            "argument --rounds: expected a positive integer, got '0'",
        ),
    ],
)
def test_bench_loader_rejects_bad_input(args, message, capsys):
    try:  # argparse's own exit for a flag's type; the command's check for the rest
        rc = bcm(["bench", "loader", "--experiments", *args])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err
