"""Start-up validation of every config key that reaches a command line, and shell-injection safety.

Flag keys under prep.args / grid / apps.<task> are checked against the argparse parser of the
command they reach (bcmcore.cli.flags), so a typo stops the workflow before any job, with its config
path. No config string becomes shell syntax: attempts through every config path that reaches a shell
command create no file."""

import re
import subprocess
from pathlib import Path

import pytest
from helpers import assert_stopped_before_any_job, jobs, snakemake, write_yaml

from bcmcore.cli.flags import check, parser, render
from bcmcore.config import ConfigError


def over(tmp_path, digits):
    return write_yaml(tmp_path / "over.yaml", {"datasets": {"digits": digits}})


def exp(name, **section):
    return {"experiments": {name: section}}


@pytest.mark.parametrize(
    "digits, needles",
    [
        (
            {"prep": {"format": "digits", "args": {"shard_sise": 10}}},
            ["datasets.digits.prep.args.shard_sise: unknown flag", "shard_size"],
        ),
        (
            {"prep": {"format": "digitz"}},
            ["datasets.digits.prep.format:", "'digitz'", "digits"],
        ),
        (
            {"prep": {"format": "digits", "args": {"resolution": 0}}},
            ["datasets.digits.prep.args.resolution: expected a positive integer, got '0'"],
        ),
        (
            exp("ict", grid={"recipee": "demo-nfe2"}),
            ["datasets.digits.experiments.ict.grid.recipee"],
        ),
        (
            exp("ict", grid={"num_steps": "two"}),
            ["experiments.ict.grid.num_steps: expected a positive integer"],
        ),
        # the grid's recipe is built by bcm sample's own rule (recipes.build) at start-up
        (
            exp("igct", grid={"num_steps": 18}),
            ["experiments.igct.grid: --num-steps: igct takes 1 or 2 denoiser calls, got 18"],
        ),
        (
            exp("igct", grid={"sampler": "ancestral", "steps": "80,1"}),
            ["experiments.igct.grid: sampler 'ancestral' runs on kind cm or bcm"],
        ),
        (
            exp("igct", grid={"w": float("nan")}),
            ["experiments.igct.grid.w: expected a number >= 0, got 'nan'"],
        ),
        (
            exp("igct", apps={"class": {"target_clas": "all"}}),
            ["datasets.digits.experiments.igct.apps.class.target_clas: unknown flag"],
        ),
        (
            exp("igct", apps={"clas": {"target_class": "all"}}),
            ["datasets.digits.experiments.igct.apps.clas: unknown edit task", "class"],
        ),
        (
            exp(
                "authors",
                **{"import": {"format": "igct-edm", "path": "a.pkl", "how": "h", "kin": 1}},
            ),
            ["datasets.digits.experiments.authors.import.kin: unknown flag"],
        ),
        (exp("ict", grid={"out": "elsewhere"}), ["experiments.ict.grid.out: unknown flag"]),
        (
            exp("ict", train={"lr": float("nan")}),
            ["datasets.digits.experiments.ict", "train.lr: expected a finite number"],
        ),
        (
            exp("ict", train={"ema_rate": float("inf")}),
            ["train.ema_rate: expected a finite number"],
        ),
    ],
    ids=[
        "prep-args-typo",
        "unknown-prep-format",
        "prep-args-bad-value",
        "grid-typo",
        "grid-bad-type",
        "grid-igct-steps",
        "grid-sampler-kind",
        "grid-nan",
        "apps-typo",
        "apps-unknown-task",
        "import-flag-typo",
        "grid-reserved-key",
        "nan-lr",
        "inf-ema",
    ],
)
def test_bad_flag_or_number_stops_before_any_job(tmp_path, digits, needles):
    res = snakemake(tmp_path, "-n", "--configfile", over(tmp_path, digits))
    assert_stopped_before_any_job(res, tmp_path, *needles)


def test_flag_checks_come_from_the_commands_own_parsers():
    """One source: every flag of `bcm sample` is accepted, and nothing else (no second list to
    keep)."""
    p = parser("sample")
    for a in p._actions:
        if a.option_strings and a.dest not in ("help", "out", "network"):
            value = True if a.nargs == 0 else (a.choices[0] if a.choices else a.default or "1")
            check(p, {a.dest: value}, "grid", reserved=("out", "network"))
    with pytest.raises(ConfigError, match=r"grid\.steps_typo: unknown flag of `bcm sample`"):
        check(p, {"steps_typo": 1}, "grid")
    prep = parser("prep", "gmm2d")
    check(prep, {"n_train": 5, "params": "p.json"}, "prep.args")
    with pytest.raises(ConfigError, match=r"prep\.args\.n_train: expected a positive integer"):
        check(prep, {"n_train": -5}, "prep.args")


HOSTILE = "x$(touch {m})`touch {m}`;touch {m}|touch {m}&&touch {m}'\""
# Unquoted, this one runs (HOSTILE's trailing quote would only make the command a syntax error).
RUNS = "x$(touch {m})`touch {m}`;touch {m}"


def test_rendered_flags_are_shell_quoted(tmp_path):
    """Through a real shell: hostile keys and values arrive as exactly the given tokens."""
    marker = tmp_path / "marker"
    bad = HOSTILE.format(m=marker) + "\n"
    text = render({"ok_key": bad, bad: "v", "flag": True, "off": False})
    out = subprocess.run(
        ["bash", "-c", f"printf '%s\\0'{text}"], capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\0")[:-1] == ["--ok-key", bad, "--" + bad.replace("_", "-"), "v", "--flag"]
    assert not marker.exists()


def _hostile_configs(m):
    """(config path, override of datasets.digits, target): every config string that reaches a shell.
    (config path, override of datasets.digits, target): every config string that reaches a shell."""
    h = RUNS.format(m=m)
    folder = {"format": "folder", "args": {"src": h}}
    return [
        ("prep.format", {"prep": {"format": f"digits {h}"}}, "results/digits/shards/manifest.json"),
        ("prep.args key", {"prep": {"format": "digits", "args": {h: 1}}}, "all"),
        ("prep.args value", {"prep": folder}, "results/digits/shards/manifest.json"),
        ("grid key", exp("ict", grid={h: 1}), "all"),
        ("apps key", exp("igct", apps={"class": {h: 1}}), "all"),
        ("experiment name", {"experiments": {h: {"model": {}, "loss": {}}}}, "all"),
        ("run config value", exp("ict", data={"split": h}), "results/digits/runs/ict/config.json"),
        (
            "eval spec value",
            {"eval": {"ref_split": h}},
            "results/digits/eval/ict/spec.json",
        ),
    ]


@pytest.mark.timeout(900)
def test_injection_through_every_config_path_creates_no_file(tmp_path):
    """Each attempt either stops at start-up or runs its rule with the string as one argument."""
    marker = tmp_path / "marker"
    for i, (path, digits, target) in enumerate(_hostile_configs(marker)):
        cwd = tmp_path / f"case{i}"
        cwd.mkdir()
        if path == "prep.args value":  # a staged source must exist (rule prep's input) to reach it
            (cwd / RUNS.format(m=marker)).mkdir(parents=True)
        res = snakemake(cwd, target, "--configfile", over(cwd, digits))
        assert not marker.exists(), (path, res.stdout[-3000:])
        if path == "prep.args value":  # the converter ran and got the string as one argument
            assert f"{RUNS.format(m=marker)}: " in res.stdout, res.stdout[-3000:]
        elif path in ("run config value", "eval spec value"):  # printf wrote the string as data
            assert res.returncode == 0, res.stdout[-3000:]
            assert RUNS.format(m=marker) in (cwd / target).read_text()
        else:  # a name that reaches a command line: stopped by the schema, before any job
            assert_stopped_before_any_job(res, cwd, "config error at 'datasets.digits")
    # values of flags that only reach their rule after training: the exact shell command, run by
    # bash
    for path, digits, rule in (
        ("grid value", exp("ict", grid={"class_labels": RUNS.format(m=marker)}), "sample_grid"),
        (
            "apps value",
            exp("ict", apps={"interpolate": {"alphas": RUNS.format(m=marker)}}),
            "app_grid",
        ),
        ("site path", {}, "prep"),
    ):
        cwd = tmp_path / rule
        cwd.mkdir(exist_ok=True)
        args = ["-n", "-p", "all", "--configfile", over(cwd, digits)]
        if path == "site path":
            site = cwd / "site$(touch marker)`touch marker`;touch marker"  # marker: in cwd
            site.mkdir()
            (site / "launcher.yaml").write_text("executor: local\n")
            args += ["--config", f"site={site}"]
        res = snakemake(cwd, *args)
        assert res.returncode == 0, (path, res.stdout[-3000:])
        shell = next(j["shell"] for j in jobs(res.stdout) if j["rule"] == rule)
        command = re.sub(r"^bcm ", "echo ", shell)
        subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, timeout=60)
        assert not marker.exists() and not (cwd / "marker").exists(), (path, command)
        assert Path(cwd).is_dir()
