"""`bcm prep` is built from data_prep's FORMATS tables: a format declared in one place is a
subcommand with its flags, checked by kind, and its converter is what runs."""

import json

import numpy as np
import pytest

import data_prep
from bcmcore.cli.prep import prep
from bcmcore.shards import chunks, read_manifest


def test_every_format_is_a_subcommand_and_the_tables_do_not_collide(capsys):
    from data_prep import arrays, folders

    names = list(arrays.FORMATS) + list(folders.FORMATS)
    assert len(names) == len(set(names)) == len(data_prep.formats())
    with pytest.raises(SystemExit):
        prep(["--help"])
    listing = capsys.readouterr().out
    for name in names:
        assert name in listing


def _ramp_format():
    def splits(a, n):
        x = np.repeat(np.arange(a.count, dtype=np.float32)[:, None], 2, 1) * float(a.scale)
        meta = {"dataset": "ramp", "kind": "vector", "resolution": None, "channels": None}
        return {"train": chunks(x, np.zeros(a.count, np.int64), n)}, meta, {"train": a.count}

    return data_prep.Format(
        "a ramp of 2-D points (test only)",
        splits,
        options=(
            ("--count", "positive", 5, "points"),
            ("--scale", "text", "1", "a text option: the converter reads it"),
        ),
    )


def test_a_new_format_entry_is_a_working_subcommand(tmp_path, monkeypatch):
    """Adding a format touches one file: its FORMATS entry (here laid over the table)."""
    table = {**data_prep.formats(), "ramp": _ramp_format()}
    monkeypatch.setattr(data_prep, "formats", lambda: table)
    out = tmp_path / "ramp"
    # the option kinds become checked flags: "positive" refuses 0 with one argparse error
    with pytest.raises(SystemExit) as e:
        prep(["ramp", "--out", str(out), "--count", "0"])
    assert e.value.code == 2
    assert prep(["ramp", "--out", str(out), "--count", "7", "--workers", "1"]) == 0
    man = read_manifest(out)
    assert man["splits"]["train"]["count"] == 7
    assert json.loads((out / "manifest.json").read_text())["options"]["count"] == 7
    assert prep(["ramp", "--out", str(out), "--count", "3", "--scale", "2"]) == 0
    assert read_manifest(out)["splits"]["train"]["count"] == 3
