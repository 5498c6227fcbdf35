"""`bcm prep --out DIR` replaces DIR as a whole (bcmcore/dataset_swap.py): a failed prep leaves the
previous dataset as it was, nothing bcm did not write is deleted, unexpected files are named."""

import subprocess
import sys

import pytest

from bcmcore.cli.prep import prep
from bcmcore.config import UserError
from bcmcore.shards import data_digest


def gmm(out, *flags):
    return prep(["gmm2d", "--out", str(out), "--n-train", "64", "--n-test", "16", *flags])


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_a_shard_named_user_file_is_named_and_kept(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    mine = out / "photos-000000.tar"  # looks like a shard; the old prep deleted it
    mine.write_bytes(b"my holiday")
    with pytest.raises(UserError, match=r"photos-000000\.tar: unexpected in the dataset folder"):
        gmm(out, "--shard-size", "16")
    assert mine.read_bytes() == b"my holiday" and sorted(p.name for p in tmp_path.iterdir()) == [
        "s"
    ]
    # beside a finished dataset too: a file its manifest does not list
    mine.unlink()
    gmm(out, "--shard-size", "16")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    res = subprocess.run(
        [sys.executable, "-m", "bcmcore", "prep", "gmm2d", "--out", str(out), "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "notes.txt: unexpected in the dataset folder (not written by bcm prep)" in (res.stderr)
    assert snapshot(out) == before


def test_reprep_replaces_shards_and_drops_stale_caches(tmp_path):
    out = tmp_path / "s"
    gmm(out, "--shard-size", "16")
    first = data_digest(out)
    cache = out / "demo-classifier.pt"
    cache.write_bytes(b"trained on the first data")
    # same samples (another shard size would change them; the seed is the same): caches move over
    gmm(out, "--shard-size", "16", "--workers", "1")
    assert data_digest(out) == first and cache.read_bytes() == b"trained on the first data"
    # fewer, larger shards of other data: old shards and the stale cache are gone, nothing else
    gmm(out, "--shard-size", "64", "--seed", "3")
    assert data_digest(out) != first and not cache.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        ".bcm-prep-files.json",
        "manifest.json",
        "test-000000.idx",
        "test-000000.tar",
        "train-000000.idx",
        "train-000000.tar",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_shards_stay_known_when_snakemake_removed_the_manifest(tmp_path):
    """Snakemake deletes a job's output (manifest.json) before it reruns prep."""
    out = tmp_path / "s"
    gmm(out, "--shard-size", "16")
    (out / "manifest.json").unlink()
    gmm(out, "--shard-size", "64", "--seed", "1")
    assert len(list(out.glob("train-*.tar"))) == 1


def test_interrupted_prep_leaves_the_dataset_and_no_build_folder(tmp_path, monkeypatch):
    from bcmcore import shards

    out = tmp_path / "s"
    gmm(out, "--shard-size", "16")
    before = snapshot(out)
    calls = []

    def interrupted(task, _real=shards._write_shard):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _real(task)

    monkeypatch.setattr(shards, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gmm(out, "--shard-size", "16", "--seed", "5", "--workers", "1")
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert data_digest(out) is not None


def test_out_through_a_symlink_replaces_the_real_folder(tmp_path):
    real = tmp_path / "scratch" / "s"
    real.mkdir(parents=True)
    link = tmp_path / "s"
    link.symlink_to(real)
    gmm(link, "--shard-size", "64")
    gmm(link, "--shard-size", "64", "--seed", "2")
    assert link.is_symlink() and (real / "manifest.json").is_file()
    assert sorted(p.name for p in real.parent.iterdir()) == ["s"]
