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
                # a snapshot (and its quick FID) every 2 steps: the FID panel of the curves
                "ict": {
                    "grid": {"seeds": "0-3"},
                    "train": {"snapshot_every": 2, "snapshot_fid": 100, "snapshot_grid": 4},
                },
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


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The shrunk demo, built once for the tests below: (working directory, snakemake's result)."""
    cwd = tmp_path_factory.mktemp("demo")
    (cwd / "shrunk.yaml").write_text(yaml.safe_dump(SHRUNK))
    return cwd, snakemake(cwd, "all", timeout=1500)


@pytest.mark.slow
def test_whole_dag_on_a_shrunk_demo(demo):
    tmp_path, res = demo
    assert res.returncode == 0, res.stdout[-5000:]
    d = tmp_path / "results/digits"

    fid = rows(d / "fid_table.csv")
    assert {(r["model"], r["sampler"]) for r in fid} == {
        ("ict", "demo-nfe1"),
        ("ict", "demo-multistep2"),
        # NFE 1 is the shared demo recipe; NFE 2-4 are each model's tuned times (bcm tune)
        *{(m, "demo-nfe1") for m in ("bcm_ft", "bcm_scratch")},
        *{(m, f"digits-{m}-nfe{n}") for m in ("bcm_ft", "bcm_scratch") for n in (2, 3, 4)},
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
        # training curves of every trained model; ict's with its 2 snapshot FIDs (steps 2 and 4)
        log = (d / "logs" / f"curves-{exp}.log").read_text()
        assert f"2 status rows, {2 if exp == 'ict' else 0} snapshot FIDs" in log, (exp, log)
        with Image.open(d / "curves" / f"{exp}.png") as im:  # ict: the FID panel below the loss
            assert (im.size[1] > 600) == (exp == "ict") and im.size[0] > 400, (exp, im.size)
        # 4 digits of 8x8, shown 4x (images.MIN_TILE), 1-pixel gaps
        with Image.open(d / "grids" / exp / "samples.png") as im:
            assert im.size == (2 * 33 + 1, 2 * 33 + 1)
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
            assert im.size == (11 * 33 + 1, 2 * 33 + 1)

    again = snakemake(tmp_path, "-n", "all", timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-3000:]


@pytest.mark.slow
def test_report_as_a_user_sees_it(demo, tmp_path):
    """`snakemake --report report.html` on the demo, opened in headless Chromium: every category of
    results rendered, screenshots of the tables, a plot and the grids (kept in tmp_path)."""
    from report_browser import Report, find_chromium

    cwd, res = demo
    assert res.returncode == 0, res.stdout[-3000:]
    out = snakemake(cwd, "--report", "report.html", timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    report = Report(cwd / "report.html", find_chromium(), tmp_path)

    start = report.view(None, "start")  # the landing page: the workflow's description
    assert "bcm-pipeline" in start.text, start.text[:2000]
    for category in ("Tables", "Plots", "Training curves", "Sample grids", "Applications"):
        assert category in start.text, start.text[:2000]  # the menu
    start.assert_drawn()

    tables = report.view("Tables", "tables")
    for name in ("fid_table.csv", "mse_table.csv", "guidance_table.csv"):
        assert name in tables.text, tables.text[:3000]
    tables.assert_drawn()
    # each table's link hands over the CSV the pipeline wrote (header + one row per model / setting)
    fid = tables.download("fid_table.csv")
    assert fid.splitlines()[0].startswith("model,") and len(fid.splitlines()) > 10, fid[:500]

    plots = report.view("Plots", "plots")
    for name in ("fid_vs_nfe.png", "mse_vs_nfe.png", "guidance.png"):
        assert name in plots.text, plots.text[:3000]
    plot = report.show("results/digits/plots/fid_vs_nfe.png", "plot")
    plot.assert_shows(cwd / "results/digits/plots/fid_vs_nfe.png")  # on screen, pixel for pixel

    curves = report.view("Training curves", "curves")  # a row per trained model, by its label
    for model in ("ict", "bcm_ft", "bcm_scratch", "igct", "edm"):
        assert model in curves.text.splitlines(), curves.text[:3000]
    curves.assert_drawn()
    for model in ("ict", "bcm_ft"):
        curve = report.show(f"results/digits/curves/{model}.png", f"curve-{model}")
        curve.assert_shows(cwd / f"results/digits/curves/{model}.png")  # pixel for pixel

    grids = report.view("Sample grids", "grids")
    for model in ("ict", "bcm_ft", "bcm_scratch", "igct", "edm"):
        assert model in grids.text, grids.text[:3000]
    grids.assert_drawn()
    for model in ("bcm_ft", "edm"):
        grid = report.show(f"results/digits/grids/{model}/samples.png", f"grid-{model}")
        assert grid.image_sizes == [(67, 67)], grid.image_sizes  # 2x2 digits of 8x8, shown 4x
        grid.assert_shows(cwd / f"results/digits/grids/{model}/samples.png")

    apps = report.view("Applications", "apps")
    for task in ("interpolate", "inpaint", "jpeg", "class"):
        assert task in apps.text, apps.text[:3000]
    apps.assert_drawn()
    for app in ("bcm_ft/edit-interpolate", "igct/edit-class"):
        shown = report.show(f"results/digits/grids/{app}.png", app.replace("/", "-"))
        shown.assert_shows(cwd / f"results/digits/grids/{app}.png")
