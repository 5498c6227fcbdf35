"""A checkout whose path holds a space and a quote: every place a path reaches a shell (the
Makefile, the rules, `bcm launch`) passes it as one word."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from bcmcore.metrics import report

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ODD = 'my data/it\'s a "checkout"'


def env():
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }


def test_make_demo_passes_the_checkout_path_as_one_word(tmp_path):
    """`make demo` puts the checkout's .venv/bin first on PATH (it used to write PATH=<path> into
    the command line, which split at the space). The venv is a stand-in here: its snakemake records
    what it was given, so the test checks make's quoting, not the demo."""
    co = tmp_path / ODD
    venv = co / ".venv" / "bin"
    venv.mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", co)
    shutil.copy(ROOT / "pyproject.toml", co)
    shutil.copy(ROOT / "requirements.lock", co)
    (venv / ".installed").touch()  # newer than pyproject.toml and the lock: no venv build
    stub = venv / "snakemake"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$PATH" "$*" "$(command -v snakemake)" > ran.txt\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    res = subprocess.run(["make", "demo"], cwd=co, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    path, args, found = (co / "ran.txt").read_text().splitlines()
    assert path.split(os.pathsep)[0] == str(venv) and args == "--profile cluster/local all"
    assert found == str(stub)


def test_prep_and_tables_rules_run_in_a_spaced_checkout(tmp_path):
    co = tmp_path / ODD
    co.mkdir(parents=True)
    for name in ("workflow", "cluster"):
        ignore = shutil.ignore_patterns("__pycache__", ".snakemake", "results")
        shutil.copytree(ROOT / name, co / name, ignore=ignore)
    shutil.copy(ROOT / "environment.yml", co)

    def snakemake(*args):
        cmd = [str(BIN / "snakemake"), *args, "--profile", "cluster/local"]
        res = subprocess.run(
            cmd,
            cwd=co,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stdout[-4000:]
        return res.stdout

    # prep: a heavy rule, through `bcm launch` (its job folder and launcher path in the checkout)
    snakemake("results/digits/shards/manifest.json")
    assert (co / "results/digits/shards/train-000000.tar").is_file()
    # tables: a script rule; the sweeps' tables stand in (empty) so only this rule runs
    for exp in ("ict", "bcm_ft", "bcm_scratch", "igct", "edm"):
        for table, columns in report.COLUMNS.items():
            report.write_csv(co / f"results/digits/eval/{exp}/{table}_table.csv", [], columns)
    snakemake("results/digits/fid_table.csv", "--allowed-rules", "tables")
    assert (co / "results/digits/fid_table.csv").is_file()
