"""`bcm eval --images` (issue 27, item 5): any set of images scored through the sweep's own
features and protocol, on the real 8x8 demo digits and their demo classifier. The sweep's rows
come back exactly from the images it saved; the held-out test digits against the train split
give the README's 3.1; ADM-style mu / sigma give the FID of the images they came from; bad
inputs give one line and exit 2."""

import json

import numpy as np
import pytest
from helpers import demo_tiny
from PIL import Image

from bcmcore import cli
from bcmcore.data import load_split
from bcmcore.metrics.report import read_csv
from bcmcore.nets import save_network


def bcm(argv, capsys=None):
    """`bcm argv` in this process -> (exit code, stderr or None)."""
    try:
        rc = cli.main([str(a) for a in argv] + ["--device", "cpu", "--no-progress"])
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, (capsys.readouterr().err if capsys else None)


def scored(out):
    """The full-precision row of an `--images` run (eval_info.json) and its CSV row."""
    info = json.loads((out / "eval_info.json").read_text())
    (csv_row,) = read_csv(out / "fid_table.csv")
    return info["row"], csv_row


def npz_of(path, images_nchw, **extra):
    np.savez(path, arr_0=np.asarray(images_nchw).transpose(0, 2, 3, 1), **extra)
    return path


def pngs_of(folder, images_nchw):
    folder.mkdir()
    for i, a in enumerate(np.asarray(images_nchw)):
        Image.fromarray(a[0], "L").save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    """The demo's own data: 8x8 digit shards (the config's resolution) and their classifier."""
    from bcmcore.metrics import demo_classifier

    out = tmp_path_factory.mktemp("digits8") / "shards"
    assert (
        cli.main(["prep", "digits", "--out", str(out), "--resolution", "8", "--workers", "1"]) == 0
    )
    demo_classifier.load_demo_classifier(out)
    return out


@pytest.fixture(scope="module")
def sweep(digits8, tmp_path_factory):
    """A demo-sized sweep of a tiny untrained BCM (demo classifier features, 130 samples in
    uneven batches of 48) that keeps its samples -> (spec path, output dir, its rows)."""
    from bcmcore.metrics.spec import load_spec
    from bcmcore.metrics.sweep import run

    root = tmp_path_factory.mktemp("sweep")
    save_network(root / "bcm.pt", demo_tiny("bcm"), 0, {"note": "untrained test network"})
    spec = {
        "dataset": str(digits8),
        "features": {"kind": "demo"},
        "num_samples": 130,
        "batch_size": 48,
        "pr_real": 400,
        "kid_subsets": 20,
        "kid_subset_size": 100,
        "save_samples": True,
        "models": [
            {
                "name": "bcm",
                "network": str(root / "bcm.pt"),
                "kind": "bcm",
                "samplers": [{"recipe": "demo-nfe1"}, {"recipe": "demo-nfe2"}],
            }
        ],
    }
    (root / "spec.json").write_text(json.dumps(spec))
    rows = run(load_spec(root / "spec.json"), root / "eval", device="cpu", progress=False)
    return root / "spec.json", root / "eval", rows["fid"]


def test_the_sweeps_saved_samples_score_to_its_rows_exactly(sweep, tmp_path):
    spec, out, rows = sweep
    for row in rows:
        npz = out / "samples" / f"bcm-{row['sampler']}.npz"
        with np.load(npz) as d:
            images, seeds = d["arr_0"], d["seeds"]
        assert images.dtype == np.uint8 and images.shape == (130, 8, 8, 1)
        assert seeds.tolist() == list(range(130))
        (sweep_csv,) = [
            r for r in read_csv(out / "fid_table.csv") if r["sampler"] == row["sampler"]
        ]
        # the npz the sweep wrote, and the same pixels as a folder of PNGs
        folder = pngs_of(tmp_path / row["sampler"], images.transpose(0, 3, 1, 2))
        for source in (npz, folder):
            dest = tmp_path / f"{source.name}-scored"
            assert bcm(["eval", "--images", source, "--spec", spec, "--out", dest])[0] == 0
            got, csv_row = scored(dest)
            for key in ("fid", "precision", "recall", "kid", "kid_std", "is", "is_std"):
                assert got[key] == row[key], (source, key)  # float equality, not approx
            assert got["features"] == row["features"] and got["samples"] == 130
            for key in ("fid", "precision", "recall", "is", "kid", "features", "samples"):
                assert csv_row[key] == sweep_csv[key], key  # the table's text too
            assert list(csv_row) == list(sweep_csv)  # the sweep's columns, in its order
        assert (
            csv_row["seeds"] == ""
            and scored(tmp_path / f"{npz.name}-scored")[1]["seeds"] == (sweep_csv["seeds"])
        )  # an npz of the sweep (or of `bcm sample`) names its seeds; PNGs cannot


def test_held_out_test_digits_against_the_train_split_give_the_readmes_3_1(digits8, tmp_path):
    """README: "two halves of the train split score 0.7, the 300 held-out test digits 3.1"."""
    flags = ["--dataset", digits8, "--features", "demo"]
    assert (
        bcm(
            ["eval", "--images", digits8, "--images-split", "test", *flags, "--out", tmp_path / "a"]
        )[0]
        == 0
    )
    shards_row, _ = scored(tmp_path / "a")
    assert round(shards_row["fid"], 1) == 3.1  # measured 3.0631
    assert shards_row["samples"] == 300
    # the same digits as an npz: the same number, exactly
    x_test, _ = load_split(digits8, "test")
    npz = npz_of(tmp_path / "test.npz", x_test.numpy())
    assert bcm(["eval", "--images", npz, *flags, "--out", tmp_path / "b"])[0] == 0
    assert scored(tmp_path / "b")[0]["fid"] == shards_row["fid"]
    # two halves of the train split, one as the reference images (--ref)
    x, _ = load_split(digits8, "train")
    halves = [npz_of(tmp_path / f"half{i}.npz", x[i::2].numpy()) for i in (0, 1)]
    argv = ["eval", "--images", halves[0], "--ref", halves[1], *flags, "--out", tmp_path / "c"]
    assert bcm(argv)[0] == 0
    assert round(scored(tmp_path / "c")[0]["fid"], 1) == 0.7  # measured 0.6724


def test_adm_mu_sigma_give_the_fid_of_the_images_they_came_from(digits8, tmp_path, capsys):
    flags = ["--dataset", digits8, "--features", "demo"]
    x, _ = load_split(digits8, "train")
    x_test, _ = load_split(digits8, "test")
    ref = npz_of(tmp_path / "ref.npz", x[:700].numpy())
    test = npz_of(tmp_path / "test.npz", x_test.numpy())
    assert bcm(["eval", "--images", test, "--ref", ref, *flags, "--out", tmp_path / "img"])[0] == 0
    by_images, _ = scored(tmp_path / "img")
    # the reference set's own statistics (stats.npz of scoring it), saved as ADM's batch keeps them
    assert bcm(["eval", "--images", ref, *flags, "--out", tmp_path / "ref-scored"])[0] == 0
    with np.load(tmp_path / "ref-scored" / "stats.npz") as d:
        np.savez(tmp_path / "adm_ref.npz", mu=d["mu"], sigma=d["sigma"])
    capsys.readouterr()
    argv = ["eval", "--images", test, "--ref-stats", tmp_path / "adm_ref.npz", *flags]
    assert bcm([*argv, "--out", tmp_path / "stats"])[0] == 0
    by_stats, _ = scored(tmp_path / "stats")
    assert by_stats["fid"] == by_images["fid"]
    assert by_stats["is"] == by_images["is"]  # IS needs no reference
    assert "precision" not in by_stats and "kid" not in by_stats  # statistics: FID (and IS) only
    assert "FID only" in capsys.readouterr().out
    # a changed mu moves the FID: the statistics are really used
    with np.load(tmp_path / "adm_ref.npz") as d:
        np.savez(tmp_path / "moved.npz", mu=d["mu"] + 1, sigma=d["sigma"])
    argv[4] = tmp_path / "moved.npz"
    assert bcm([*argv, "--out", tmp_path / "moved"])[0] == 0
    assert scored(tmp_path / "moved")[0]["fid"] > by_images["fid"] + 1


def _bad_inputs(tmp, digits8):
    """(case, argv, text the one error line must contain)."""
    x_test, _ = load_split(digits8, "test")
    ok = npz_of(tmp / "ok.npz", x_test.numpy())
    (tmp / "empty").mkdir()
    np.savez(tmp / "no_arr0.npz", images_wrong=x_test.numpy())
    np.savez(tmp / "stats_only.npz", mu=np.zeros(64), sigma=np.eye(64))
    np.savez(tmp / "mismatch.npz", mu=np.zeros(64), sigma=np.eye(63))
    np.savez(tmp / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    np.savez(
        tmp / "named.npz", mu=np.zeros(64), sigma=np.eye(64), meta='{"features": "clean-inception"}'
    )
    np.savez(tmp / "float.npz", arr_0=np.zeros((100, 8, 8, 1), np.float32))
    big = np.zeros((100, 1, 16, 16), np.uint8)
    npz_of(tmp / "16px.npz", big)
    d = ["--dataset", digits8, "--features", "demo", "--out", tmp / "o"]
    return [
        ("empty folder", ["--images", tmp / "empty", *d], "no .png files"),
        (
            "npz without arr_0",
            ["--images", tmp / "no_arr0.npz", *d],
            "expected an array 'images' or 'arr_0'",
        ),
        (
            "statistics as images",
            ["--images", ok, "--ref", tmp / "stats_only.npz", *d],
            "holds statistics mu / sigma",
        ),
        ("images as statistics", ["--images", ok, "--ref-stats", ok, *d], "give it as --ref"),
        (
            "mu/sigma shapes",
            ["--images", ok, "--ref-stats", tmp / "mismatch.npz", *d],
            "do not fit the demo-",
        ),
        (
            "features: dimension",
            ["--images", ok, "--ref-stats", tmp / "inception.npz", *d],
            "(2048,)",
        ),
        (
            "features: named",
            ["--images", ok, "--ref-stats", tmp / "named.npz", *d],
            "'clean-inception'",
        ),
        (
            "P/R from statistics",
            ["--images", ok, "--ref-stats", tmp / "stats_only.npz", "--metrics", "fid,pr", *d],
            "need reference features",
        ),
        ("unknown metric", ["--images", ok, "--metrics", "fid,lpips", *d], "--metrics"),
        ("float pixels", ["--images", tmp / "float.npz", *d], "expected uint8 pixels"),
        ("wrong size for demo", ["--images", tmp / "16px.npz", *d], "16x16 images"),
        (
            "too few images",
            ["--images", ok, "--num-samples", "40", *d],
            "more samples than feature dimensions",
        ),
        (
            "demo without data",
            ["--images", ok, "--features", "demo", "--out", tmp / "o"],
            "--dataset",
        ),
        ("no features", ["--images", ok, "--dataset", digits8, "--out", tmp / "o"], "--features"),
        (
            "inception unstaged",
            [
                "--images",
                ok,
                "--features",
                "clean",
                "--inception-path",
                tmp / "none.pt",
                "--dataset",
                digits8,
                "--out",
                tmp / "o",
            ],
            "none.pt",
        ),
    ]


def test_bad_inputs_give_one_error_line_and_exit_2(digits8, tmp_path, capsys):
    for case, argv, text in _bad_inputs(tmp_path, digits8):
        rc, err = bcm(["eval", *argv], capsys)
        lines = err.strip().splitlines()
        assert rc == 2, (case, err)
        assert len(lines) == 1 and lines[0].startswith("bcm eval: error:"), (case, err)
        assert text in lines[0], (case, lines[0])
        assert not (tmp_path / "o" / "fid_table.csv").exists(), case


def test_inception_modes_take_any_size_and_colour_and_resize_themselves(tmp_path, monkeypatch):
    """The Inception route on a staged TorchScript stand-in (helpers.FakeInception, the
    clean-fid interface): grey PNGs of one size against RGB npz images of another, no dataset;
    P/R and KID only (FID would need more than 2048 images)."""
    import torch
    from helpers import FakeInception

    from bcmcore.metrics import features
    from bcmcore.util import sha256_file

    staged = tmp_path / features.INCEPTION_FILE
    torch.jit.script(FakeInception()).save(str(staged))
    monkeypatch.setattr(features, "INCEPTION_BYTES", staged.stat().st_size)
    monkeypatch.setattr(features, "INCEPTION_SHA256", sha256_file(staged))
    rng = np.random.default_rng(0)
    grey = pngs_of(tmp_path / "grey", rng.integers(0, 256, (12, 1, 16, 16), dtype=np.uint8))
    rgb = npz_of(tmp_path / "rgb.npz", rng.integers(0, 256, (15, 3, 12, 12), dtype=np.uint8))
    argv = ["eval", "--images", grey, "--ref", rgb, "--features", "clean", "--inception-path"]
    assert bcm([*argv, staged, "--metrics", "pr,kid", "--out", tmp_path / "o"])[0] == 0
    row, csv_row = scored(tmp_path / "o")
    assert row["features"] == "clean-inception" and row["samples"] == 12
    assert 0 <= row["precision"] <= 1 and "fid" not in row and csv_row["fid"] == ""
