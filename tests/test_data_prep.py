"""data_prep: every format round-trips through real shards and the loader; deterministic; bad input
is one error."""

import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcmcore.cli.prep import prep
from bcmcore.config import UserError
from bcmcore.data import DataConfig, load_split, make_loader
from bcmcore.shards import read_manifest


def prep1(*argv):
    """Run the converter in-process, single worker (fast); returns the manifest."""
    out = argv[argv.index("--out") + 1]
    assert prep([*argv, "--workers", "1"]) == 0
    return read_manifest(out)


def stream_all(shards, split, n):
    """All n samples through make_loader in key order (no shuffle), as uint8 + labels."""
    it = make_loader(
        DataConfig(shards=str(shards), split=split, shuffle=False, in_memory=False, num_workers=0),
        n,
    )
    b = next(it)
    x = b["x"] if b["x"].dim() == 2 else torch.round((b["x"] + 1) * 127.5).to(torch.uint8)
    return x, b["y"]


def no_temp_files(d):
    return not list(d.glob(".tmp-*")) if d.exists() else True


# ------------------------------------------------------------------------------------------
# CIFAR-10


def write_cifar(path, rng, per_batch=3, n_test=2):
    """A tarball in the official cifar-10-python layout: python pickles with bytes keys, planar
    rows."""
    batches = {}
    with tarfile.open(path, "w:gz") as tar:

        def put(name, obj):
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        put(
            "batches.meta",
            {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072},
        )
        for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [
            ("test_batch", n_test)
        ]:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            batches[name] = (data, labels)
            put(
                name,
                {
                    b"batch_label": name.encode(),
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * n,
                },
            )
    return batches


def test_cifar10_roundtrip_and_webdataset(tmp_path):
    import webdataset as wds

    batches = write_cifar(tmp_path / "cifar-10-python.tar.gz", np.random.default_rng(0))
    man = prep1(
        "cifar10",
        "--src",
        str(tmp_path / "cifar-10-python.tar.gz"),
        "--out",
        str(tmp_path / "s"),
        "--shard-size",
        "4",
    )
    assert man["class_names"] == [f"c{i}" for i in range(10)] and man["resolution"] == 32
    assert man["splits"]["train"]["count"] == 15 and len(man["splits"]["train"]["shards"]) == 4
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    x, y = stream_all(tmp_path / "s", "train", 15)
    # Planar rows are R, G, B planes: reshaping to [N, 3, 32, 32] is exactly NCHW.
    assert torch.equal(x, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert y.tolist() == labels
    xt, yt = load_split(tmp_path / "s", "test")
    assert torch.equal(xt, torch.from_numpy(batches["test_batch"][0].reshape(-1, 3, 32, 32)))
    assert yt.tolist() == batches["test_batch"][1]
    # The shards are real WebDataset tars.
    ds = wds.WebDataset(str(tmp_path / "s" / "train-000001.tar"), shardshuffle=False).decode("rgb8")
    samples = list(ds)
    assert [s["__key__"] for s in samples] == ["00000004", "00000005", "00000006", "00000007"]
    assert samples[0]["cls"] == labels[4]
    assert np.array_equal(samples[0]["png"], data[4].reshape(3, 32, 32).transpose(1, 2, 0))


def test_conversion_is_deterministic(tmp_path):
    write_cifar(tmp_path / "c.tar.gz", np.random.default_rng(1))
    prep1(
        "cifar10",
        "--src",
        str(tmp_path / "c.tar.gz"),
        "--out",
        str(tmp_path / "a"),
        "--shard-size",
        "4",
    )
    assert (
        prep(
            [
                "cifar10",
                "--src",
                str(tmp_path / "c.tar.gz"),
                "--out",
                str(tmp_path / "b"),
                "--shard-size",
                "4",
                "--workers",
                "2",
            ]
        )
        == 0
    )  # a process pool this time
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert (
        names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == 12
    )  # + .bcm-prep-files.json
    for n in names:
        if n != "manifest.json":
            assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    assert read_manifest(tmp_path / "a")["splits"] == read_manifest(tmp_path / "b")["splits"]


# ------------------------------------------------------------------------------------------
# ImageNet npz


def write_npz(path, n, res, rng, labels=None, keys=("data", "labels")):
    data = rng.integers(0, 256, (n, 3 * res * res), dtype=np.uint8)
    labels = rng.integers(1, 1001, n) if labels is None else np.asarray(labels)
    np.savez(path, **{keys[0]: data, keys[1]: labels})
    return data, labels


def test_imagenet_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "npz"
    src.mkdir()
    # part10 must come after part2 (numeric, not lexical order); labels 1-based incl. the extremes.
    parts = {
        i: write_npz(
            src / f"Imagenet64_train_part{i}.npz",
            3,
            8,
            rng,
            labels=[1, 1000, 5] if i == 1 else None,
        )
        for i in (1, 2, 10)
    }
    val = write_npz(src / "Imagenet64_val_data.npz", 2, 8, rng)
    man = prep1(
        "imagenet-npz",
        "--src",
        str(src),
        "--resolution",
        "8",
        "--out",
        str(tmp_path / "s"),
        "--shard-size",
        "2",
    )
    assert man["splits"]["train"]["count"] == 9 and man["splits"]["val"]["count"] == 2
    assert len(man["splits"]["train"]["shards"]) == 6  # shards never span part files
    x, y = stream_all(tmp_path / "s", "train", 9)
    data = np.concatenate([parts[i][0] for i in (1, 2, 10)])
    assert torch.equal(x, torch.from_numpy(data.reshape(-1, 3, 8, 8)))
    assert y.tolist() == (np.concatenate([parts[i][1] for i in (1, 2, 10)]) - 1).tolist()
    assert y[:3].tolist() == [0, 999, 4]
    xv, yv = stream_all(tmp_path / "s", "val", 2)
    assert (
        torch.equal(xv, torch.from_numpy(val[0].reshape(-1, 3, 8, 8)))
        and yv.tolist() == (val[1] - 1).tolist()
    )


# ------------------------------------------------------------------------------------ image folders


def test_imagenet_jpeg_folder_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    expect = []
    for wnid in ("n02", "n01"):
        (tmp_path / "in" / "train" / wnid).mkdir(parents=True)
        for k in range(2):
            p = tmp_path / "in" / "train" / wnid / f"{wnid}_{k}.JPEG"
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p, quality=90)
            expect.append((str(p), wnid))
    man = prep1(
        "imagenet-folder",
        "--src",
        str(tmp_path / "in"),
        "--resolution",
        "8",
        "--out",
        str(tmp_path / "s"),
    )
    assert man["class_names"] == ["n01", "n02"]
    x, y = stream_all(tmp_path / "s", "train", 4)
    expect.sort()
    # Images already at the target size: the ADM crop is the identity, so pixels = the decoded JPEG.
    ref = torch.stack(
        [
            torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
            for p, _ in expect
        ]
    )
    assert torch.equal(x, ref)
    assert y.tolist() == [man["class_names"].index(w) for _, w in expect]


def blocky(rng, h, w):
    """An image constant on aligned 2x2 blocks: BOX halving maps it exactly to its block values."""
    small = rng.integers(0, 256, (h // 2, w // 2, 3), dtype=np.uint8)
    return small.repeat(2, 0).repeat(2, 1), small


def test_flat_folder_split_rule_and_adm_crop(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "ffhq"
    src.mkdir()
    smalls = []
    for name in ("c.png", "a.png", "e.png", "b.png", "d.png"):  # written unsorted
        img, small = blocky(rng, 16, 48)  # 16x48 -> one BOX halving (8x24) -> centre 8x8 crop
        Image.fromarray(img).save(src / name)
        smalls.append((name, small))
    man = prep1(
        "ffhq",
        "--src",
        str(src),
        "--resolution",
        "8",
        "--test-count",
        "2",
        "--out",
        str(tmp_path / "s"),
    )
    assert man["splits"]["train"]["count"] == 3 and man["splits"]["test"]["count"] == 2
    assert man["num_classes"] == 0
    smalls.sort()
    x, y = stream_all(tmp_path / "s", "train", 3)
    xt, yt = stream_all(tmp_path / "s", "test", 2)
    ref = torch.stack([torch.from_numpy(s[:, 8:16]).permute(2, 0, 1) for _, s in smalls])
    assert torch.equal(torch.cat([x, xt]), ref)  # a,b,c train; d,e test; centre columns 8..15
    assert y.tolist() == [-1] * 3 and yt.tolist() == [-1] * 2


# ---------------------------------------------------------------------------------------- demo sets


def test_digits_roundtrip(tmp_path):
    from sklearn.datasets import load_digits

    man = prep1("digits", "--out", str(tmp_path / "s"), "--resolution", "16")
    assert (man["splits"]["train"]["count"], man["splits"]["test"]["count"]) == (1497, 300)
    assert (man["resolution"], man["channels"], man["num_classes"]) == (16, 1, 10)
    d = load_digits()
    small = torch.from_numpy(np.rint(d.images * 255 / 16)).float()[:, None]
    # Independent reference for PIL's bilinear 2x upscaling: half-pixel-centred interpolation.
    ref = torch.nn.functional.interpolate(small, size=16, mode="bilinear", align_corners=False)
    x, y = (
        torch.cat(t)
        for t in zip(
            *(stream_all(tmp_path / "s", s, n) for s, n in (("train", 1497), ("test", 300)))
        )
    )
    match = torch.cdist(x.float().flatten(1), ref.flatten(1)).argmin(1)
    assert sorted(match.tolist()) == list(
        range(1797)
    )  # every digit exactly once over the two splits
    assert (x.float() - ref[match]).abs().max() <= 1  # pixels (up to rounding)
    assert torch.equal(y, torch.from_numpy(d.target)[match])  # labels


def test_digits_default_is_the_demos_8x8(tmp_path):
    """`bcm prep digits` with no --resolution writes what the demo trains on: the 8x8 digits as they
    are (scaled to 0..255), the resolution workflow/config/config.yaml sets."""
    import yaml
    from sklearn.datasets import load_digits

    demo = yaml.safe_load((Path(__file__).parents[1] / "workflow/config/config.yaml").read_text())
    man = prep1("digits", "--out", str(tmp_path / "s"))
    assert man["resolution"] == demo["datasets"]["digits"]["prep"]["args"]["resolution"] == 8
    x, y = (
        torch.cat(t)
        for t in zip(
            *(stream_all(tmp_path / "s", s, n) for s, n in (("train", 1497), ("test", 300)))
        )
    )
    d = load_digits()
    ref = torch.from_numpy(np.rint(d.images * 255 / 16)).to(torch.uint8)[:, None]
    match = torch.cdist(x.float().flatten(1), ref.float().flatten(1)).argmin(1)
    assert sorted(match.tolist()) == list(range(1797))  # every digit exactly once
    assert torch.equal(x, ref[match]) and torch.equal(y, torch.from_numpy(d.target)[match])


def test_gmm2d_roundtrip(tmp_path):
    from bcmcore.toy import DEMO_GMM

    man = prep1(
        "gmm2d",
        "--out",
        str(tmp_path / "s"),
        "--n-train",
        "50",
        "--n-test",
        "10",
        "--seed",
        "7",
        "--shard-size",
        "16",
    )
    assert man["toy"] == DEMO_GMM.to_dict() and man["kind"] == "vector" and man["dim"] == 2
    rng = np.random.default_rng(7)
    xs, ks = DEMO_GMM.sample(50, rng)
    x, y = stream_all(tmp_path / "s", "train", 50)
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(xs.astype(np.float32)))
    assert y.tolist() == ks.tolist()


def test_bcm_prep_dispatch(tmp_path):
    from bcmcore.cli import main as bcm

    assert (
        bcm(
            [
                "prep",
                "gmm2d",
                "--out",
                str(tmp_path / "s"),
                "--n-train",
                "8",
                "--n-test",
                "0",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert list(read_manifest(tmp_path / "s")["splits"]) == ["train"]


# ---------------------------------------------------------------------------------------- bad input


def test_missing_source_file(tmp_path, capsys):
    from bcmcore.cli import main as bcm

    missing = tmp_path / "nope" / "cifar-10-python.tar.gz"
    with pytest.raises(UserError, match=str(missing)):
        prep(["cifar10", "--src", str(missing), "--out", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()
    assert bcm(["prep", "cifar10", "--src", str(missing), "--out", str(tmp_path / "s")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_npz_wrong_keys_and_wrong_size(tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "k").mkdir()
    write_npz(tmp_path / "k" / "Imagenet64_train_part1.npz", 2, 8, rng, keys=("x", "y"))
    with pytest.raises(
        UserError, match=r"Imagenet64_train_part1\.npz: expected keys 'data' and 'labels'"
    ):
        prep(
            [
                "imagenet-npz",
                "--src",
                str(tmp_path / "k"),
                "--resolution",
                "8",
                "--out",
                str(tmp_path / "s"),
            ]
        )
    (tmp_path / "z").mkdir()
    write_npz(tmp_path / "z" / "Imagenet64_train_part1.npz", 2, 8, rng)
    write_npz(tmp_path / "z" / "Imagenet64_train_part2.npz", 2, 16, rng)  # 16x16 rows, 8x8 expected
    with pytest.raises(
        UserError, match=r"Imagenet64_train_part2\.npz: expected uint8 data \[N, 192\]"
    ):
        prep(
            [
                "imagenet-npz",
                "--src",
                str(tmp_path / "z"),
                "--resolution",
                "8",
                "--out",
                str(tmp_path / "s"),
                "--shard-size",
                "1",
                "--workers",
                "1",
            ]
        )
    assert not (tmp_path / "s" / "manifest.json").exists() and no_temp_files(tmp_path / "s")


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_bad_image_midway_leaves_the_previous_dataset(tmp_path):
    rng = np.random.default_rng(6)
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / f"{i}.png")
    prep1(
        "folder",
        "--src",
        str(src),
        "--resolution",
        "8",
        "--out",
        str(tmp_path / "s"),
        "--shard-size",
        "1",
    )
    before = snapshot(tmp_path / "s")
    Image.fromarray(rng.integers(0, 256, (4, 9, 3), dtype=np.uint8)).save(
        src / "9.png"
    )  # too small, sorted last: three shards are written before it fails
    with pytest.raises(UserError, match=r"9\.png: image is 9x4, smaller than the 8px target"):
        prep(
            [
                "folder",
                "--src",
                str(src),
                "--resolution",
                "8",
                "--out",
                str(tmp_path / "s"),
                "--shard-size",
                "1",
                "--workers",
                "2",
            ]
        )
    # The previous dataset is exactly as it was, and no build folder or temp file remains.
    assert snapshot(tmp_path / "s") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "s"]
    assert len(load_split(tmp_path / "s", "train")[0]) == 3


def test_corrupt_cifar_pickle_is_refused(tmp_path):
    path = tmp_path / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = b"cos\nsystem\n(S'echo hi'\ntR."  # a pickle that would run a command
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(
        UserError, match=r"c\.tar\.gz: member .*batches\.meta is not a CIFAR-10 python pickle"
    ):
        prep(["cifar10", "--src", str(path), "--out", str(tmp_path / "s")])


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--n-train", "0", "a positive integer"),
        ("--n-train", "-5", "a positive integer"),
        ("--n-test", "-1", "an integer >= 0"),
        ("--shard-size", "0", "a positive integer"),
    ],
)
def test_bad_counts_are_one_error_and_write_nothing(tmp_path, flag, value, expected):
    out = tmp_path / "s"
    res = subprocess.run(
        [sys.executable, "-m", "bcmcore", "prep", "gmm2d", "--out", str(out), flag, value],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert f"argument {flag}: expected {expected}, got '{value}'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (out / "manifest.json").exists()


POOL_UNDER_A_RECORDING_HANDLER = """
import signal, time
from bcmcore import shards

signal.signal(signal.SIGTERM, lambda signum, frame: None)  # records only, as a training run's does

def fail_on_3(t):
    if t == 3:
        raise ValueError("chunk 3 is corrupt")
    time.sleep(0.05)
    return t

assert list(shards._bounded_map(abs, range(8), workers=2, depth=4)) == list(range(8))
for _ in range(5):  # six workers, most waiting on the task queue's lock when the error comes
    try:
        list(shards._bounded_map(fail_on_3, range(40), workers=6, depth=12))
    except ValueError as e:
        print("raised:", e)
"""


def test_prep_pool_ends_under_a_parent_sigterm_handler_that_only_records():
    """A forked prep worker inherits the parent's Python signal handlers. Under one that only
    records SIGTERM (a training run's, submitit's), Pool.terminate waited forever for the workers
    blocked on the task queue's lock: `bcm prep` in such a process hung after an error."""
    p = subprocess.Popen(
        [sys.executable, "-c", POOL_UNDER_A_RECORDING_HANDLER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so that a hang's workers can be killed with it
    )
    try:
        out, err = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise AssertionError("the pool hung under a parent's recording SIGTERM handler") from None
    assert p.returncode == 0, err
    assert out.count("raised: chunk 3 is corrupt") == 5, out
