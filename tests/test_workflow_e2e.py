"""The whole DAG, for real, on a further-shrunk demo (cluster/local profile: local processes via bcm
launch).

Every method trains for a few steps, every sweep, grid and application runs, and the dataset's
tables and plots come out; then a second invocation finds nothing to do, and `--report` gathers the
results.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
SHRUNK = {
    "datasets": {
        "digits": {
            "prep": {"args": {"workers": 1}},
            "defaults": {
                "train": {"total_steps": 4, "batch": 16, "status_every": 2, "checkpoint_every": 2}
            },
            "experiments": {
                "ict": {"grid": {"seeds": "0-3"}},
                "bcm_ft": {
                    "train": {"total_steps": 4},
                    "grid": {"seeds": "0-3"},
                    "loss": {"curriculum": {"kind": "phases", "phases": [[2, 20], [2, 40]]}},
                    "apps": {
                        "interpolate": {"indices": "0-3"},
                        "inpaint": {"indices": "0-1"},
                        "jpeg": {"indices": "0-1"},
                    },
                },
                "bcm_scratch": {"grid": {"seeds": "0-3"}},
                "igct": {
                    "train": {"total_steps": 4, "checkpoint_every": 2},
                    "grid": {"seeds": "0-3"},
                    "apps": {"class": {"indices": "0-1"}},
                    "eval": {"guidance": {"ws": [1.0, 2.0], "edits": 3}},
                },
                "edm": {
                    "train": {"total_steps": 4, "checkpoint_every": 2},
                    "grid": {"seeds": "0-3", "recipe": None, "sampler": "heun", "num_steps": 3},
                    "apps": {"class": {"indices": "0-1", "num_steps": 3}},
                    "eval": {
                        "guidance": {"ws": [2.0], "recipe": "edm-18"},
                        "inversions": [{"steps": 3}],
                    },
                },
            },
            "eval": {"num_samples": 100, "batch_size": 100, "inversion_count": 8},
        }
    }
}


def snakemake(cwd, *args, timeout):
    cmd = [
        "timeout",
        "-k",
        "15",
        str(timeout),
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "workflow/Snakefile"),
        "--profile",
        str(ROOT / "cluster/local"),
        *args,
        "--configfile",
        str(cwd / "shrunk.yaml"),
    ]
    return subprocess.run(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_whole_dag_on_a_shrunk_demo(tmp_path):
    (tmp_path / "shrunk.yaml").write_text(yaml.safe_dump(SHRUNK))
    res = snakemake(tmp_path, "all", timeout=1500)
    assert res.returncode == 0, res.stdout[-5000:]
    d = tmp_path / "results/digits"

    fid = rows(d / "fid_table.csv")
    assert {(r["model"], r["sampler"]) for r in fid} == {
        ("ict", "demo-nfe1"),
        ("ict", "demo-multistep2"),
        *{(m, f"demo-nfe{n}") for m in ("bcm_ft", "bcm_scratch") for n in (1, 2, 3, 4)},
    }
    assert {int(r["nfe"]) for r in fid if r["model"] == "bcm_ft"} == {1, 2, 3, 4}
    assert all(float(r["fid"]) >= 0 and int(r["samples"]) == 100 for r in fid)
    # IS (demo classifier head, at most its 10 classes) and KID on the demo features, named in the
    # table
    assert all(1 <= float(r["is"]) <= 10 and r["kid"] != "" for r in fid)
    assert all(r["features"].startswith("demo-") for r in fid)
    mse = rows(d / "mse_table.csv")
    assert {r["model"] for r in mse} == {"bcm_ft", "bcm_scratch", "igct", "edm"}
    assert {r["task"] for r in mse if r["model"] == "bcm_ft"} == {"inversion", "jpeg-q20"}
    for r in mse:  # reconstruction PSNR / SSIM / LPIPS (the demo stand-in for LPIPS-AlexNet, named)
        assert float(r["psnr"]) > 0 and -1 <= float(r["ssim"]) <= 1 and float(r["lpips"]) >= 0
        assert r["lpips_net"].startswith("lpips-demo-")
    guidance = rows(d / "guidance_table.csv")
    assert sorted((r["model"], float(r["w"])) for r in guidance) == [
        ("edm", 2.0),
        ("igct", 1.0),
        ("igct", 2.0),
    ]
    # class editing: 3 (igct) and 8 (edm: the demo's 30, capped by inversion_count) digits x 9 other
    # classes
    assert sorted((r["model"], int(r["edits"])) for r in guidance) == [
        ("edm", 72),
        ("igct", 27),
        ("igct", 27),
    ]
    assert all(0 <= float(r["edit_rate"]) <= 1 for r in guidance)
    for r in guidance:  # VGG16 P/R columns (demo features stand in, and say so) and the edit LPIPS
        assert 0 <= float(r["vgg_precision"]) <= 1 and 0 <= float(r["vgg_recall"]) <= 1
        assert "stand-in" in r["vgg_features"] and float(r["edit_lpips"]) >= 0
    assert {p.name for p in (d / "plots").glob("*.png")} == {
        "fid_vs_nfe.png",
        "mse_vs_nfe.png",
        "guidance.png",
    }

    for exp in ("ict", "bcm_ft", "bcm_scratch", "igct", "edm"):
        with Image.open(d / "grids" / exp / "samples.png") as im:  # 4 digits of 16x16, 1-pixel gaps
            assert im.size == (35, 35)
        assert (d / "runs" / exp / "config.json").is_file() and (
            d / "eval" / exp / "spec.json"
        ).is_file()
    for app in ("bcm_ft/edit-interpolate", "bcm_ft/edit-inpaint", "bcm_ft/edit-jpeg"):
        with Image.open(d / "grids" / f"{app}.png") as im:
            assert im.size[0] > 16 and im.size[1] > 16
    for app in (
        "igct/edit-class",
        "edm/edit-class",
    ):  # 2 rows: the source, then one edit per class 0..9
        with Image.open(d / "grids" / f"{app}.png") as im:
            assert im.size == (11 * 17 + 1, 2 * 17 + 1)

    again = snakemake(tmp_path, "-n", "all", timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-3000:]
    report = snakemake(tmp_path, "--report", "report.html", timeout=300)
    assert report.returncode == 0, report.stdout[-3000:]
    html = (tmp_path / "report.html").read_text()
    assert "fid_table.csv" in html and "samples.png" in html and "edit-interpolate.png" in html
