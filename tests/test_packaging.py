"""One environment: pyproject.toml and environment.yml list the same dependencies and Python
bounds, requirements.lock pins and hashes all of them (what `make venv` installs); the console
script is wired."""

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _name(req):
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _environment():
    """environment.yml -> ({name: spec}, python spec)."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {}
    for item in env["dependencies"]:
        for d in item.get("pip", []) if isinstance(item, dict) else [item]:
            listed[_name(d.split("=")[0] if "==" not in d else d)] = d
    aliases = {"pytorch": "torch"}  # conda's package name for torch
    return {aliases.get(n, n): d for n, d in listed.items() if n != "pip"}


def test_environment_yml_matches_pyproject():
    project = _project()
    deps = {_name(d) for d in project["dependencies"] + project["optional-dependencies"]["test"]}
    listed = _environment()
    python = listed.pop("python")
    assert deps == set(listed), (
        f"only in pyproject.toml: {sorted(deps - set(listed))}; "
        f"only in environment.yml: {sorted(set(listed) - deps)}"
    )
    # the same Python bounds; the tests need 3.11 (tomllib)
    assert python == "python" + project["requires-python"].split("#")[0].strip()
    assert Requirement("python" + project["requires-python"]).specifier.contains("3.11")
    assert not Requirement("python" + project["requires-python"]).specifier.contains("3.10")


def _closure(names):
    """Every distribution the installed `names` pull in (Requires-Dist without extras)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(_name(r.name))
    return seen


def test_snakemake_report_needs_are_declared():
    # acea26b: `snakemake --report` in a `pip install -e .` env: "pygments must be installed"
    declared = {_name(d) for d in _project()["dependencies"]}
    assert "pygments" in _closure(declared)
    assert "pygments" in declared  # declared itself, not by luck of another package's deps


def _lock():
    """requirements.lock -> {name: (version, [sha256, ...])}."""
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            req, *hashes = line.split("--hash=")
            name, version = req.strip().split("==")
            pins[_name(name)] = (version, [h.strip() for h in hashes])
    return pins


def test_lock_pins_and_hashes_every_dependency():
    pins = _lock()
    assert pins and all(
        v and hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes)
        for v, hashes in pins.values()
    )
    project = _project()
    for d in project["dependencies"] + project["optional-dependencies"]["test"]:
        r = Requirement(d.split("#")[0])
        assert _name(r.name) in pins, f"{r.name} is not in requirements.lock (make lock)"
        assert r.specifier.contains(pins[_name(r.name)][0]), f"lock breaks {d}"
    assert pins["torch"][0] == "2.14.1" and pins["torchvision"][0] == "0.29.1"
    # ... and is closed: every requirement of a locked package is locked
    for name in pins:
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not in this venv (another platform's wheel); pip check covers make venv
        for req in reqs:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                assert _name(r.name) in pins, f"{name} needs {r.name}, not locked"


def test_make_venv_installs_the_lock_with_hashes():
    make = (ROOT / "Makefile").read_text()
    rule = make[make.index("$(BIN)/.installed:") :].split("\n\n")[0]
    assert "requirements.lock" in rule.splitlines()[0]  # a new lock rebuilds the venv
    assert "--require-hashes --no-deps -r requirements.lock" in rule
    assert "--no-deps -e '.[test]'" in rule and "pip check" in rule


def test_bcm_console_script_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "bcmcore", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for cmd in ("train", "launch", "sample", "invert", "edit", "eval", "prep", "bench"):
        assert cmd in out.stdout
