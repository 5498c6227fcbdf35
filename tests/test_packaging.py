"""pyproject.toml and environment.yml list the same dependencies; the console script is wired."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req):
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    deps = {
        _name(d)
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for item in env["dependencies"]:
        if isinstance(item, dict):
            listed |= {_name(d) for d in item.get("pip", [])}
        else:
            listed.add(_name(item.split("=")[0]))
    listed.discard("python")
    listed.discard("pip")
    aliases = {"pytorch": "torch"}  # conda's package name for torch
    listed = {aliases.get(n, n) for n in listed}
    assert deps - listed == set(), (
        f"in pyproject.toml but not environment.yml: {sorted(deps - listed)}"
    )
    assert listed - deps <= {"pytest", "pytest-timeout"}, (
        f"only in environment.yml: {sorted(listed - deps)}"
    )


def test_bcm_console_script_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "bcmcore", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for cmd in ("train", "launch", "sample", "invert", "edit", "eval", "prep", "bench"):
        assert cmd in out.stdout
