"""The workflow's Snakemake idioms, through Snakemake itself: staged files are written once and
are inputs of the jobs that read them (a changed file reruns exactly those), every heavy job
writes a benchmark table that never holds back a rerun, and the rules read the config only
through common.smk's named functions.
"""

import os
import re
import signal
import subprocess
import time

import pytest
import yaml
from helpers import (
    BIN,
    ROOT,
    assert_stopped_before_any_job,
    snakemake,
    stage_raw_files,
    write_yaml,
)

PRESET_FILES = sorted(
    p for p in (ROOT / "workflow/config").glob("*.yaml") if p.name != "config.yaml"
)
HEAVY = {"prep", "train", "import_network", "evaluate", "sample_grid", "app_grid"}


def dry_jobs(out):
    """{rule: [{key: value} of each job]} of a `snakemake -n -p` log (every key a job shows)."""
    jobs = {}
    for block in re.split(r"\n\[[^\]]+\]\n", out):
        m = re.match(r"\s*(?:local)?rule (\w+):\n", block)
        if m:
            keys = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
            jobs.setdefault(m[1], []).append(keys)
    return jobs


def test_rules_hold_no_lambdas_and_read_the_config_through_named_functions():
    rules = [ROOT / "workflow/Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    for path in rules:
        text = path.read_text()
        assert "lambda" not in text, f"{path.name}: a lambda (name the function in common.smk)"
        if path.name not in ("common.smk", "imports.smk"):
            assert 'config["datasets"]' not in text, f"{path.name}: a raw config path"


@pytest.mark.parametrize("preset", PRESET_FILES, ids=lambda p: p.stem)
def test_presets_write_each_staged_path_once(preset):
    """Each raw path appears once in the preset's text; the keys that use it alias it."""
    text = preset.read_text()
    for ds, d in (yaml.safe_load(text).get("datasets") or {}).items():
        raw = [r["path"] for r in d.get("raw", [])]
        for path in raw:
            as_value = re.findall(rf"(?<=[\s:&\w]){re.escape(path)}(?=[\s,}}]|$)", text, re.M)
            assert len(as_value) == 1, f"{preset.name}: {path} written {len(as_value)} times"
        used = [(d.get("prep", {}).get("args") or {}).get("src")]
        used += [v for k, v in d.get("eval", {}).get("features", {}).items() if k.endswith("_path")]
        used += [e.get("loss", {}).get("lpips_path") for e in d.get("experiments", {}).values()]
        assert {u for u in used if u} <= set(raw), f"{preset.name}: {ds} uses a path not in raw"


def all_enabled(tmp_path, preset):
    """An overlay enabling every experiment of the preset (the disabled CD ones read LPIPS)."""
    cfg = yaml.safe_load((ROOT / f"workflow/config/{preset}.yaml").read_text())
    over = {
        ds: {"experiments": {e: {"enabled": True} for e in d["experiments"]}}
        for ds, d in cfg["datasets"].items()
        if "experiments" in d
    }
    return write_yaml(tmp_path / "all-enabled.yaml", {"datasets": over})


def test_staged_files_are_inputs_of_the_jobs_that_read_them(tmp_path):
    stage_raw_files(tmp_path, "cifar10")
    preset = str(ROOT / "workflow/config/cifar10.yaml")
    res = snakemake(
        tmp_path, "-n", "-p", "all", "--configfile", preset, all_enabled(tmp_path, "cifar10")
    )
    assert res.returncode == 0, res.stdout[-3000:]
    jobs = dry_jobs(res.stdout)
    (prep,) = jobs["prep"]
    assert prep["input"] == "data/cifar10/cifar-10-python.tar.gz"
    assert (
        "--src data/cifar10/cifar-10-python.tar.gz" in res.stdout
    )  # the same path, once in config
    features = ("data/inception-2015-12-05.pt", "data/vgg16.pt", "data/alexnet-owt-7be5be79.pth")
    for job in jobs["evaluate"]:
        assert all(f in job["input"].split(", ") for f in features), job
    trains = {re.search(r"exp=(\w+)", j["wildcards"])[1]: j for j in jobs["train"]}
    assert "data/alexnet-owt-7be5be79.pth" in trains["cd"]["input"]  # CD-LPIPS reads the AlexNet
    assert "data/alexnet" not in trains["ict"]["input"]


def test_a_changed_staged_file_reruns_the_jobs_that_read_it_and_their_dependants(tmp_path):
    """Everything marked done (--touch); then a newer raw dataset reruns prep and all below it, and
    newer Inception weights rerun only the sweeps and the tables (Snakemake's plan, --summary)."""
    stage_raw_files(tmp_path, "cifar10")
    cfg = ("--configfile", str(ROOT / "workflow/config/cifar10.yaml"))
    res = snakemake(tmp_path, "--until", "run_config", "eval_spec", *cfg)
    assert res.returncode == 0, res.stdout[-3000:]

    def summary():
        res = snakemake(tmp_path, "--summary", *cfg)
        assert res.returncode == 0, res.stdout[-3000:]
        return [line.split("\t") for line in res.stdout.splitlines()[1:] if "\t" in line]

    for row in summary():
        path = tmp_path / row[0]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir() if row[0].endswith("/plots") else path.touch()
    res = snakemake(tmp_path, "--touch", "-q", "all", *cfg)
    assert res.returncode == 0, res.stdout[-3000:]
    assert not [r[0] for r in summary() if r[5] == "update pending"]

    def pending_after_touching(staged):
        """New content, a later mtime (Snakemake skips a newer file whose checksum it recorded)."""
        path = tmp_path / staged
        path.write_bytes(path.read_bytes() + b"new")
        later = time.time() + 5
        os.utime(path, (later, later))
        return {
            re.sub(r"/(ict|bcm_scratch|igct|edm)/", "/<exp>/", r[0])
            for r in summary()
            if r[5] == "update pending"
        }

    assert pending_after_touching("data/inception-2015-12-05.pt") == {
        *(f"results/cifar10/eval/<exp>/{t}_table.csv" for t in ("fid", "mse", "guidance")),
        *(f"results/cifar10/{t}_table.csv" for t in ("fid", "mse", "guidance")),
        "results/cifar10/plots",
    }
    pending = pending_after_touching("data/cifar10/cifar-10-python.tar.gz")
    assert {
        "results/cifar10/shards/manifest.json",
        "results/cifar10/runs/<exp>/network-final.pt",
    } <= pending
    assert "results/cifar10/grids/<exp>/samples.png" in pending


def test_a_staged_path_missing_from_raw_stops_naming_its_key(tmp_path):
    over = write_yaml(
        tmp_path / "over.yaml",
        {"datasets": {"digits": {"prep": {"format": "folder", "args": {"src": "data/my-images"}}}}},
    )
    res = snakemake(tmp_path, "--configfile", over)
    assert_stopped_before_any_job(
        res,
        tmp_path,
        "dataset 'digits': raw files missing",
        "data/my-images  <- not listed under datasets.digits.raw; "
        "used by datasets.digits.prep.args.src",
    )


def test_every_heavy_job_has_a_benchmark_beside_its_log(tmp_path):
    res = snakemake(tmp_path, "-n", "-p", "all")
    assert res.returncode == 0, res.stdout[-3000:]
    jobs = dry_jobs(res.stdout)
    assert HEAVY - {"import_network"} <= set(jobs)
    for rule, blocks in jobs.items():
        for job in blocks:
            if rule in HEAVY:
                log = job["log"].replace("/logs/", "/benchmarks/").replace(".log", ".tsv")
                assert job.get("benchmark") == log, job
            else:
                assert "benchmark" not in job, job


# ------------------------------------------------------------------ a killed training, resumed


def tiny_ict(path, total_steps):
    cfg = {
        "datasets": {
            "digits": {
                "prep": {"args": {"workers": 1}},
                "defaults": {
                    "train": {"total_steps": total_steps, "batch": 8, "checkpoint_every": 5}
                },
                "experiments": {
                    e: {"enabled": False} for e in ("bcm_ft", "bcm_scratch", "igct", "edm")
                },
            }
        }
    }
    return write_yaml(path, cfg)


@pytest.mark.slow
def test_killed_training_resumes_and_its_benchmark_comes_with_the_finished_job(tmp_path):
    """Ctrl-C to Snakemake (SIGINT to its process group) after the first checkpoint: no benchmark
    is left for the unfinished job. The same command again resumes from the checkpoint (nothing
    held back by benchmark files) and the finished job writes its benchmark row."""
    run = tmp_path / "results/digits/runs/ict"
    bench = tmp_path / "results/digits/benchmarks/train-ict.tsv"
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "workflow/Snakefile"),
        "--profile",
        str(ROOT / "cluster/local"),
        str(run.relative_to(tmp_path) / "network-final.pt"),
        "--configfile",  # last: it takes every argument after it
        tiny_ict(tmp_path / "tiny.yaml", 400),
    ]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    first = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not list(run.glob("training-state-*.pt")):
            assert first.poll() is None and time.time() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGINT)
        out = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode != 0 and not (run / "network-final.pt").exists(), out[-3000:]
    assert not bench.exists()
    assert (tmp_path / "results/digits/benchmarks/prep.tsv").is_file()  # the finished prep's

    again = subprocess.run(
        ["timeout", "-k", "10", "600", *cmd],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert again.returncode == 0, again.stdout[-4000:]
    assert "resumed from training-state-" in (run / "log.txt").read_text()
    header, row = bench.read_text().splitlines()
    assert header.split("\t")[:3] == ["s", "h:m:s", "max_rss"] and float(row.split("\t")[0]) > 0
