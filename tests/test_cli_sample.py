"""`bcm sample | invert | edit` on tiny saved networks: files written, NFE recorded, ranks and
batches agree."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bcmcore import cli
from bcmcore.dist import free_port, local_env
from bcmcore.nets import ModelConfig, NetConfig, build_model, save_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(kind, path, classes=4):
    net = NetConfig(
        arch="adm",
        data_channels=3,
        resolution=8,
        channels=32,
        ch_mult=(1,),
        num_blocks=1,
        attn_res=(),
        head_channels=32,
        two_time=kind == "bcm",
        num_classes=classes,
    )
    torch.manual_seed(0)
    save_network(path, build_model(ModelConfig(kind=kind, net=net)), 7, {})
    return str(path)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("nets")
    return {k: tiny(k, d / f"{k}.pt") for k in ("bcm", "cm", "igct")}


@pytest.fixture(scope="module")
def images_npz(tmp_path_factory):
    g = np.random.default_rng(0)
    low = g.integers(0, 256, (6, 2, 2, 3)).astype(np.float64)
    imgs = np.kron(low, np.ones((1, 4, 4, 1))).astype(np.uint8)  # blocky 8x8 images
    path = tmp_path_factory.mktemp("inputs") / "imgs.npz"
    np.savez(path, images=imgs, labels=np.arange(6) % 4)
    return str(path)


def run(*argv):
    return cli.main([*argv, "--device", "cpu"])


def test_bcm_sample_writes_npz_grid_and_info_and_ignores_batch_size(nets, tmp_path):
    args = ["sample", "--network", nets["bcm"], "--seeds", "0-9", "--recipe", "imagenet64-nfe4"]
    assert run(*args, "--out", str(tmp_path / "a"), "--batch", "4") == 0
    d = np.load(tmp_path / "a" / "samples.npz")
    assert d["arr_0"].shape == (10, 8, 8, 3) and d["arr_0"].dtype == np.uint8
    assert set(d["arr_1"]) <= set(range(4)) and list(d["seeds"]) == list(range(10))
    info = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert info["nfe"] == 4 and info["sampler"] == "combined"
    from PIL import Image

    # 10 images, 4 per row; 8x8 pixels shown 4x (images.MIN_TILE)
    assert Image.open(tmp_path / "a" / "samples.png").size == (4 * 33 + 1, 3 * 33 + 1)
    assert run(*args, "--out", str(tmp_path / "b"), "--batch", "3") == 0
    assert np.array_equal(np.load(tmp_path / "b" / "samples.npz")["arr_0"], d["arr_0"])
    assert not list((tmp_path / "a").glob(".tmp-*"))


def test_bcm_sample_explicit_steps_and_labels(nets, tmp_path):
    assert (
        run(
            "sample",
            "--network",
            nets["bcm"],
            "--out",
            str(tmp_path),
            "--seeds",
            "3,5-6",
            "--sampler",
            "ancestral",
            "--steps",
            "80,2.4",
            "--class-labels",
            "2",
        )
        == 0
    )
    d = np.load(tmp_path / "samples.npz")
    assert list(d["arr_1"]) == [2, 2, 2]
    assert json.loads((tmp_path / "samples.json").read_text())["times"] == [80.0, 2.4, 0.002]


@pytest.mark.slow  # two fresh Python processes importing torch: ~40 s on the shared 2-core box
def test_bcm_sample_on_two_ranks_equals_one_rank(nets, tmp_path):
    """Real torch.distributed (gloo): each rank takes every 2nd seed; rank 0 merges in seed
    order."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "bcmcore",
        "sample",
        "--network",
        nets["bcm"],
        "--out",
        str(tmp_path / "d"),
        "--seeds",
        "0-6",
        "--recipe",
        "imagenet64-nfe3",
        "--batch",
        "2",
        "--device",
        "cpu",
    ]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **local_env(r, 2, port)},
        )
        for r in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert (
        run(
            "sample",
            "--network",
            nets["bcm"],
            "--out",
            str(tmp_path / "s"),
            "--seeds",
            "0-6",
            "--recipe",
            "imagenet64-nfe3",
        )
        == 0
    )
    a, b = np.load(tmp_path / "d" / "samples.npz"), np.load(tmp_path / "s" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert not list((tmp_path / "d").glob(".part-*"))


def test_bcm_invert_and_edit_write_results(nets, images_npz, tmp_path):
    assert (
        run(
            "invert",
            "--network",
            nets["bcm"],
            "--out",
            str(tmp_path),
            "--input",
            images_npz,
            "--indices",
            "0-3",
            "--recipe",
            "imagenet64-invert-nfe2",
            "--batch",
            "3",
        )
        == 0
    )
    d = np.load(tmp_path / "invert.npz")
    assert (
        d["latents"].shape == (4, 3, 8, 8)
        and d["arr_0"].shape == (4, 8, 8, 3)
        and d["mse"].shape == (4,)
    )
    info = json.loads((tmp_path / "invert.json").read_text())
    assert info["inversion_nfe"] == 2 and info["nfe"] == 3 and (tmp_path / "invert.png").exists()
    cases = {
        "jpeg": (["--steps", "0.07,1.2"], 2, 3),
        "inpaint": (["--steps", "0.05,2.0"], 2, 3),
        "interpolate": (["--steps", "0.07,80", "--alphas", "0,0.5,1"], 2 * 1 + 3, 5),
        "cm-inpaint": (["--steps", "80,0.5"], 2, 3),
        "super-resolution": (["--steps", "80,0.5", "--factor", "2"], 2, 3),
        "colorize": (["--recipe", "demo-cm-edit"], 3, 3),
        "inpaint-refine": (["--steps", "0.05,2.0", "--refine-steps", "0.5,0.2"], 4, 3),
    }
    for task, (extra, nfe, per_row) in cases.items():
        assert (
            run(
                "edit",
                task,
                "--network",
                nets["bcm"],
                "--out",
                str(tmp_path),
                "--input",
                images_npz,
                "--indices",
                "0-1",
                *extra,
            )
            == 0
        ), task
        info = json.loads((tmp_path / f"edit-{task}.json").read_text())
        assert info["nfe"] == nfe, task
        r = np.load(tmp_path / f"edit-{task}.npz")["arr_0"]
        assert (
            r.shape == (1 if task == "interpolate" else 2, per_row, 8, 8, 3)
            and (tmp_path / f"edit-{task}.png").exists()
        ), task
        if task != "interpolate":
            assert "mse_vs_clean" in info


def test_bcm_edit_class_shows_the_source_then_each_target_class(nets, images_npz, tmp_path):
    from bcmcore import editing
    from bcmcore.nets import load_network

    model, _ = load_network(nets["igct"])
    d = np.load(images_npz)
    x, y = (
        torch.as_tensor(d["images"][:3]).permute(0, 3, 1, 2).float() / 127.5 - 1,
        torch.as_tensor(d["labels"][:3]),
    )
    for target, classes in (("all", [0, 1, 2, 3]), ("2", [2]), ("1,3", [1, 3])):
        assert (
            run(
                "edit",
                "class",
                "--network",
                nets["igct"],
                "--out",
                str(tmp_path),
                "--input",
                images_npz,
                "--indices",
                "0-2",
                "--target-class",
                target,
                "--w",
                "3",
                "--batch",
                "2",
            )
            == 0
        )
        r = np.load(tmp_path / "edit-class.npz")["arr_0"]
        assert r.shape == (3, 1 + len(classes), 8, 8, 3) and np.array_equal(
            r[:, 0], d["images"][:3]
        )
        for col, c in enumerate(classes, 1):  # column k = the 2-NFE iGCT edit into class k (w = 3)
            want, _ = editing.edit(model, x, y, torch.full_like(y, c), 3.0)
            want = ((want + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
            assert np.abs(r[:, col].astype(int) - want).max() <= 1, (target, c)
        assert json.loads((tmp_path / "edit-class.json").read_text())["nfe"] == 2
    for bad in ("4", "x", "-1"):
        assert (
            run(
                "edit",
                "class",
                "--network",
                nets["igct"],
                "--out",
                str(tmp_path / bad),
                "--input",
                images_npz,
                "--indices",
                "0-2",
                "--target-class",
                bad,
            )
            == 2
        )


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["invert", "--recipe", "imagenet64-invert-nfe2"], "kind bcm"),  # iCT model cannot invert
        (["sample", "--sampler", "ancestral", "--steps", "80,0.5,2.4"], "strictly decreasing"),
        (["sample", "--sampler", "zigzag"], "--zigzag"),
        (["sample", "--seeds", "a-b"], "--seeds"),
        (["edit", "inpaint", "--steps", "0.05,2.0", "--mask", "nope.npy"], "--mask"),
        (["edit", "super-resolution", "--steps", "80", "--factor", "3"], "3x3 patches"),
    ],
)
def test_bad_cli_input_is_one_error_and_exit_2(nets, images_npz, tmp_path, capsys, argv, msg):
    net = nets["cm"] if argv[0] == "invert" else nets["bcm"]
    extra = ["--input", images_npz, "--indices", "0-1"] if argv[0] in ("invert", "edit") else []
    assert run(*argv, "--network", net, "--out", str(tmp_path), *extra) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("error:") == 1
    assert not list(tmp_path.glob("*.npz"))


def test_colorize_takes_grey_photos_and_refuses_a_grey_network(nets, tmp_path, capsys):
    """Grey inputs to a colour network are repeated to RGB (images.convert_image), then colorized:
    the classic use. A 1-channel network has no colour to give: one error, nothing written."""
    import torch

    from bcmcore.config import UserError
    from bcmcore.linear_ops import Colorization

    gray = tmp_path / "gray.npz"
    np.savez(gray, images=np.full((2, 8, 8, 1), 90, np.uint8))
    argv = ["edit", "colorize", "--steps", "80", "--network", nets["bcm"], "--input", str(gray)]
    assert run(*argv, "--indices", "0-1", "--out", str(tmp_path / "ok")) == 0
    assert list((tmp_path / "ok").glob("edit-*"))
    with pytest.raises(UserError, match="needs 3-channel colour images, got 1-channel data"):
        Colorization().check(torch.zeros(2, 1, 8, 8))
