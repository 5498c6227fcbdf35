"""The real workflow after a data change: `prep.args` (the seed) changed and rerun, no network,
classifier or reference statistics computed from the old data survives (issue 26, class 3: the
training job used to log `resumed from training-state-... steps N->N` on the old network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bcmcore.shards import data_digest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
OTHERS = ("bcm_ft", "bcm_scratch", "igct", "edm")


def config(seed):
    return {
        "datasets": {
            "digits": {
                "prep": {"args": {"workers": 1, "seed": seed}},
                "defaults": {"train": {"total_steps": 4, "batch": 16, "checkpoint_every": 2}},
                "experiments": {
                    "ict": {"eval": {"samplers": [{"recipe": "demo-nfe1"}]}},
                    **{e: {"enabled": False} for e in OTHERS},
                },
                "eval": {"num_samples": 100, "batch_size": 100, "inversion_count": 8},
            }
        }
    }


def snakemake(cwd, seed):
    (cwd / "cfg.yaml").write_text(yaml.safe_dump(config(seed)))
    cmd = [str(BIN / "snakemake"), "results/digits/eval/ict/fid_table.csv"]
    cmd += ["-s", str(ROOT / "workflow/Snakefile"), "--profile", str(ROOT / "cluster/local")]
    cmd += ["--configfile", str(cwd / "cfg.yaml")]
    res = subprocess.run(
        ["timeout", "-k", "15", "900", *cmd],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-5000:]
    return res.stdout


def identities(cwd):
    """The data each product of the run was computed from."""
    shards = cwd / "results/digits/shards"
    net = torch.load(
        cwd / "results/digits/runs/ict/network-final.pt", map_location="cpu", weights_only=False
    )
    clf = torch.load(shards / "demo-classifier.pt", map_location="cpu", weights_only=True)
    refs = sorted(shards.glob("fid-ref-*.npz"))
    import numpy as np

    ref = [json.loads(str(np.load(p)["meta"]))["manifest"] for p in refs]
    return data_digest(shards), net["config"]["data"]["digest"], clf["data_digest"], ref


@pytest.mark.slow
def test_changed_prep_seed_retrains_network_classifier_and_statistics(tmp_path):
    snakemake(tmp_path, seed=0)
    first = identities(tmp_path)
    assert first[1] == first[2] == first[0] and first[3] == [first[0]], first
    out = snakemake(tmp_path, seed=1)
    data, net, clf, refs = identities(tmp_path)
    assert data != first[0]
    assert net == clf == data and refs == [data], (data, net, clf, refs)
    log = (tmp_path / "results/digits/runs/ict/log.txt").read_text()
    assert "data.digest" in log and "starting over" in log, log[-3000:]
    assert "resumed from" not in log.split("starting over")[-1], log[-3000:]
    assert "steps 0->4" in log.split("starting over")[-1] and "Traceback" not in out
