"""config.from_dict: every bad key or type is one ConfigError naming the dotted key."""

import dataclasses
from typing import Literal

import pytest

from bcmcore.config import ConfigError, from_dict, to_dict
from bcmcore.util import atomic_path, atomic_write_text


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    kind: Literal["ict", "bct"] = "ict"


@dataclasses.dataclass(frozen=True)
class Outer:
    steps: int
    inner: Inner = Inner()
    phases: tuple = ()
    init: str | None = None


def test_from_dict_builds_nested_and_round_trips():
    cfg = from_dict(Outer, {"steps": 10, "inner": {"lr": 1, "kind": "bct"}, "phases": [[1, 2]]})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float) and cfg.inner.kind == "bct"
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, key",
    [
        ({"steps": 1, "inner": {"lrr": 1}}, "inner.lrr"),  # unknown key
        ({"steps": 1, "inner": {"kind": "xyz"}}, "inner.kind"),  # not one of the literals
        ({"steps": "ten"}, "steps"),  # wrong type
        ({"steps": True}, "steps"),  # bool is not an int
        ({}, "steps"),  # missing required key
        ({"steps": 1, "init": 3}, "init"),  # Optional[str] given an int
    ],
)
def test_bad_config_names_the_key(data, key):
    with pytest.raises(ConfigError, match=rf"'?{key}"):
        from_dict(Outer, data, where="")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
