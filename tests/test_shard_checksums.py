"""Corrupt shards are caught by default (bcmcore.shards): a flipped payload byte or a replaced shard
stops training with the shard and the sample named; shards of format 1 stay readable and checked."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_run

from bcmcore.config import UserError
from bcmcore.shards import ShardReader

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def prep_gmm(out, seed=0):
    from bcmcore.cli.prep import prep

    args = ["gmm2d", "--out", str(out), "--n-train", "512", "--n-test", "64", "--shard-size", "256"]
    assert prep([*args, "--workers", "1", "--seed", str(seed)]) == 0
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return prep_gmm(tmp_path_factory.mktemp("clean") / "shards")


def copy(clean, tmp_path):
    return shutil.copytree(clean, tmp_path / "shards")


def flip_payload_byte(shards, sample):
    """Flip one byte inside sample `sample`'s .npy payload of train-000000.tar (same size)."""
    tar = shards / "train-000000.tar"
    start = int(np.fromfile(shards / "train-000000.idx", "<i8")[sample])
    data = bytearray(tar.read_bytes())
    data[start + 512 + 128 + 2] ^= 0x40  # past the tar header and the .npy header: a float byte
    tar.write_bytes(bytes(data))


def train(run, **data):
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"].update(data)
    (run / "config.json").write_text(json.dumps(cfg))
    return subprocess.run(
        [sys.executable, "-m", "bcmcore", "train", "--run-dir", str(run)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "data", [{"in_memory": True}, {"in_memory": False, "num_workers": 1}], ids=["memory", "stream"]
)
def test_flipped_payload_byte_stops_training_naming_shard_and_sample(clean, tmp_path, data):
    shards = copy(clean, tmp_path)
    flip_payload_byte(shards, 5)
    run = make_run(tmp_path / "run", shards, total_steps=40, batch=64, checkpoint_every=100)
    res = train(run, shuffle=False, **data)  # 40 x 64 samples: the damaged one is read
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    assert f"{shards}/train-000000.tar: sample 00000005 fails its checksum" in res.stderr
    assert "Traceback" not in res.stderr and not (run / "network-final.pt").exists()


def test_replaced_shard_or_index_is_caught(clean, tmp_path):
    other = prep_gmm(tmp_path / "other", seed=1)  # same sizes, other samples
    shards = copy(clean, tmp_path)
    tar = "train-000001.tar"
    assert (other / tar).stat().st_size == (shards / tar).stat().st_size
    shutil.copy(other / tar, shards / tar)
    reader = ShardReader(shards, "train")
    reader.read(0)  # the other shard is intact
    with pytest.raises(UserError, match=rf"{tar}: sample 00000256 fails its checksum"):
        reader.read(256)  # the first sample of the replaced shard
    shutil.copy(other / "train-000001.idx", shards / "train-000001.idx")  # tar and index swapped
    with pytest.raises(UserError, match="train-000001.idx: sha256 does not match the manifest"):
        ShardReader(shards, "train")


def test_format_1_shards_stay_readable_and_are_hashed_at_open(clean, tmp_path):
    shards = copy(clean, tmp_path)
    man = json.loads((shards / "manifest.json").read_text())
    man["format"] = "bcm-shards/1"  # written before per-sample CRCs: offsets only, no index hash
    for split in man["splits"].values():
        for s in split["shards"]:
            idx = shards / s["index"]
            idx.write_bytes(np.fromfile(idx, "<i8")[: s["count"] + 1].tobytes())
            del s["index_sha256"]
    (shards / "manifest.json").write_text(json.dumps(man))
    x, _ = ShardReader(shards, "train").read(7)
    assert np.array_equal(x, ShardReader(clean, "train").read(7)[0])
    flip_payload_byte(shards, 5)
    with pytest.raises(UserError, match="train-000000.tar: sha256 does not match the manifest"):
        ShardReader(shards, "train")


def test_index_holds_a_crc_per_sample(clean):
    man = json.loads((clean / "manifest.json").read_text())
    s = man["splits"]["train"]["shards"][0]
    index = (clean / s["index"]).read_bytes()
    assert (
        man["format"] == "bcm-shards/2" and hashlib.sha256(index).hexdigest() == s["index_sha256"]
    )
    assert len(np.frombuffer(index, "<i8")) == 2 * s["count"] + 1
