"""The evaluation sweep on 2-D toy data: exact flow map -> FID ~ 0, `bcm eval` end to end on tiny
saved networks (raw features), spec and checkpoint errors, and a 2-rank gloo run equal to the
1-process run."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import save_untrained_networks

from bcmcore.cli import main as bcm
from bcmcore.config import ConfigError, UserError
from bcmcore.dist import free_port, local_env
from bcmcore.metrics.report import read_csv
from bcmcore.metrics.spec import EvalSpec, FeaturesConfig, load_spec
from bcmcore.nets import ModelConfig, NetConfig, build_model
from bcmcore.recipes import Recipe
from bcmcore.toy import DEMO_GMM, ExactFlowMap


@pytest.fixture(scope="module")
def gmm(tmp_path_factory):

    out = tmp_path_factory.mktemp("gmm") / "shards"
    assert (
        bcm(
            [
                "prep",
                "gmm2d",
                "--out",
                str(out),
                "--workers",
                "1",
                "--n-train",
                "3000",
                "--n-test",
                "300",
            ]
        )
        == 0
    )
    return out


def _tiny(kind, num_classes=0):
    torch.manual_seed(0)
    net = NetConfig(
        arch="mlp",
        data_channels=2,
        channels=16,
        num_blocks=1,
        two_time=(kind == "bcm"),
        num_classes=num_classes,
    )
    return build_model(ModelConfig(kind=kind, net=net))


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    return save_untrained_networks(tmp_path_factory.mktemp("nets"), _tiny, 4, 3)


def _spec_file(tmp_path, gmm, networks, **over):
    spec = {
        "dataset": str(gmm),
        "features": {"kind": "raw"},
        "num_samples": 64,
        "batch_size": 24,
        "inversion_count": 40,
        "pr_real": 1000,
        "models": [
            {
                "name": "bcm",
                "network": str(networks["bcm"]),
                "kind": "bcm",
                "samplers": [
                    {"recipe": "demo-nfe1"},
                    {"recipe": "demo-nfe2"},
                    {"recipe": "demo-nfe3"},
                    {"recipe": "demo-nfe4"},
                ],
                "inversions": [{"times": [0.07, 80.0]}, {"times": [0.07, 2.0, 80.0]}],
            },
            {
                "name": "igct",
                "network": str(networks["igct"]),
                "kind": "igct",
                "samplers": [{"sampler": "igct", "steps": 1}],
                "inversions": [{}],
                "guidance": {"ws": [1, 4]},
            },
            {
                "name": "cfg-edm",
                "network": str(networks["edm"]),
                "kind": "edm",
                "samplers": [{"sampler": "heun", "times": [80, 1, 0.002, 0], "name": "heun3"}],
                "inversions": [{"steps": 3}],
                "guidance": {"ws": [1, 4], "recipe": "edm-18"},
            },
        ],
    }
    spec.update(over)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_exact_flow_map_samples_score_like_the_data(gmm):
    """Ground truth for the sampling -> features -> FID path: exact PF-ODE samples have FID ~
    sampling noise."""
    from bcmcore import sampling
    from bcmcore.metrics.evaluator import Evaluator

    ev = Evaluator(
        EvalSpec(
            dataset=str(gmm),
            models=(),
            features=FeaturesConfig(kind="raw"),
            num_samples=400,
            batch_size=400,
            pr_real=3000,
        ),
        device="cpu",
        progress=False,
    )
    exact = ExactFlowMap(DEMO_GMM)
    one = Recipe("onestep")
    feats, nfe, _ = ev.generate(
        exact, lambda rng, y, idx: sampling.generate(exact, one, rng.randn((2,)), rng)
    )
    s = ev.score(feats)
    # 400 samples vs 3000 data points
    assert nfe == 1 and s["fid"] < 0.05 and s["precision"] > 0.9 and s["recall"] > 0.9
    assert abs(s["kid"]) < 3 * s["kid_std"] + 1e-3 and "is" not in s  # raw vectors: no classifier
    shifted = feats + np.array([0.5, 0.0])  # a wrong sampler (mean off by 0.5)
    bad = ev.score(shifted)
    assert bad["fid"] > 0.2 and bad["precision"] < s["precision"]
    assert bad["kid"] > 10 * abs(s["kid"])


def test_bcm_eval_end_to_end_on_toy_networks(tmp_path, gmm, networks):
    out = tmp_path / "eval"
    out.mkdir()
    (out / ".tmp-fid_table.csv.k1ll3d").write_text("partial")  # left by a killed earlier sweep
    assert (
        bcm(
            [
                "eval",
                "--spec",
                str(_spec_file(tmp_path, gmm, networks)),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = read_csv(out / "fid_table.csv")
    assert [(r["model"], r["sampler"], r["nfe"]) for r in rows] == [
        ("bcm", "demo-nfe1", "1"),
        ("bcm", "demo-nfe2", "2"),
        ("bcm", "demo-nfe3", "3"),
        ("bcm", "demo-nfe4", "4"),
        ("igct", "igct", "1"),
        ("cfg-edm", "heun3", "5"),
    ]
    for r in rows:
        assert (
            float(r["fid"]) > 0 and 0 <= float(r["precision"]) <= 1 and 0 <= float(r["recall"]) <= 1
        )
        assert r["samples"] == "64" and r["seeds"] == "0-63" and r["step"] == "3"
    assert rows[1]["time_steps"] == "ancestral 80>1>0.002"
    mse = read_csv(out / "mse_table.csv")
    assert [(r["model"], r["inversion_nfe"], r["nfe"]) for r in mse] == [
        ("bcm", "1", "2"),
        ("bcm", "2", "3"),
        ("igct", "1", "2"),
        ("cfg-edm", "4", "9"),
    ]
    assert all(float(r["mse"]) > 0 and r["images"] == "40" for r in mse)
    guid = read_csv(out / "guidance_table.csv")
    assert [(r["model"], r["w"], r["nfe"]) for r in guid] == [
        ("igct", "1", "1"),
        ("igct", "4", "1"),
        ("cfg-edm", "1", "35"),
        ("cfg-edm", "4", "70"),
    ]
    for name in ("plots/fid_vs_nfe.png", "plots/mse_vs_nfe.png", "plots/guidance.png"):
        assert (out / name).stat().st_size > 1000, name
    assert json.loads((out / "eval_info.json").read_text())["features"] == "raw"
    assert not list(out.rglob(".tmp-*"))


def test_eval_rejects_a_checkpoint_of_the_wrong_kind(tmp_path, gmm, networks):
    spec = _spec_file(
        tmp_path,
        gmm,
        networks,
        models=[
            {
                "name": "x",
                "network": str(networks["edm"]),
                "kind": "bcm",
                "samplers": [{"recipe": "demo-nfe1"}],
            }
        ],
    )
    with pytest.raises(
        UserError, match=r"edm.pt: a network of kind 'edm', but the spec's model 'x' declares"
    ):
        from bcmcore.cli.eval import evaluate as main

        main(
            ["--spec", str(spec), "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"]
        )
    assert bcm(["eval", "--spec", str(spec), "--out", str(tmp_path / "o")]) == 2  # one line, exit 2


def test_eval_spec_yaml_and_json_agree(tmp_path, gmm, networks):
    import yaml

    js = _spec_file(tmp_path, gmm, networks)
    ym = tmp_path / "spec.yaml"
    ym.write_text(yaml.safe_dump(json.loads(js.read_text())))
    assert load_spec(ym) == load_spec(js)
    assert load_spec(ym).models[0].inversions[1].times == (0.07, 2.0, 80.0)


def test_eval_spec_errors_name_the_file_and_key(tmp_path, gmm, networks):
    bad = _spec_file(
        tmp_path,
        gmm,
        networks,
        models=[
            {"name": "x", "network": "n.pt", "kind": "bcm", "samplers": [{"recipe": "no-such"}]}
        ],
    )
    with pytest.raises(ConfigError, match=r"spec.json: models\[0\]\.samplers\[0\]\.recipe"):
        load_spec(bad)
    bad.write_text(json.dumps({"dataset": str(gmm), "models": [], "num_sample": 3}))
    with pytest.raises(ConfigError, match="unknown config key 'spec.num_sample'"):
        load_spec(bad)
    bad.write_text(
        json.dumps(
            {
                "dataset": str(gmm),
                "models": [
                    {
                        "name": "c",
                        "network": "n.pt",
                        "kind": "cm",
                        "inversions": [{"times": [0.07, 80]}],
                    }
                ],
            }
        )
    )
    with pytest.raises(ConfigError, match="a cm model cannot invert"):
        load_spec(bad)
    bad.write_text(
        json.dumps(
            {
                "dataset": str(gmm),
                "features": {"kind": "raw"},
                "models": [
                    {
                        "name": "g",
                        "network": "n.pt",
                        "kind": "igct",
                        "guidance": {"ws": [1, 2], "edits": 10},
                    }
                ],
            }
        )
    )
    with pytest.raises(ConfigError, match=r"models\[0\]\.guidance\.edits: .*features.kind 'demo'"):
        load_spec(bad)
    with pytest.raises(UserError, match="eval spec not found"):
        load_spec(tmp_path / "missing.yaml")


def test_too_few_samples_for_the_features_is_a_clear_error(tmp_path, gmm, networks):
    spec = _spec_file(
        tmp_path,
        gmm,
        networks,
        num_samples=2,
        models=[
            {
                "name": "bcm",
                "network": str(networks["bcm"]),
                "kind": "bcm",
                "samplers": [{"recipe": "demo-nfe1"}],
            }
        ],
    )
    with pytest.raises(
        UserError, match="spec num_samples: 2 samples but the features have 2 dimensions"
    ):
        from bcmcore.cli.eval import evaluate as main

        main(
            ["--spec", str(spec), "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"]
        )


# ------------------------------------------------------------------------------------------
# distributed


def _rank_main(rank, world, port, spec, out):
    os.environ.update(local_env(rank, world, port))
    torch.set_num_threads(1)
    from helpers import install_guard

    from bcmcore import dist
    from bcmcore.cli.eval import evaluate as main

    record = install_guard()  # every collective from bcmcore/dist.py, on its device
    try:
        main(["--spec", spec, "--out", out, "--device", "cpu", "--no-progress"])
    finally:
        dist.shutdown()
    assert record["violations"] == [], record["violations"]
    assert {"all_gather", "all_reduce"} <= set(record["calls"]), record["calls"]


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_numbers(tmp_path, gmm, networks):
    """Seeds are split across ranks and features all-gathered in seed order: the tables are
    identical."""
    import torch.multiprocessing as mp

    spec = str(
        _spec_file(
            tmp_path,
            gmm,
            networks,
            num_samples=50,
            models=[
                {
                    "name": "bcm",
                    "network": str(networks["bcm"]),
                    "kind": "bcm",
                    "samplers": [{"recipe": "demo-nfe1"}, {"recipe": "demo-nfe3"}],
                    "inversions": [{"times": [0.07, 80.0]}],
                }
            ],
        )
    )
    bcm(
        ["eval", "--spec", spec, "--out", str(tmp_path / "one"), "--device", "cpu", "--no-progress"]
    )
    mp.start_processes(
        _rank_main,
        args=(2, free_port(), spec, str(tmp_path / "two")),
        nprocs=2,
        start_method="spawn",
    )
    for table in ("fid_table.csv", "mse_table.csv"):
        one, two = read_csv(tmp_path / "one" / table), read_csv(tmp_path / "two" / table)
        for a, b in zip(one, two, strict=True):
            a.pop("seconds", None), b.pop("seconds", None)
            assert a == b
