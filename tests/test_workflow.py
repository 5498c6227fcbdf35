"""The Snakemake workflow, checked through Snakemake itself (lint, dry runs, its own rerun summary).

Every call runs the real `snakemake` on the real Snakefile in a temporary working directory; nothing
here
trains: the DAG, the rerun bookkeeping and the start-up checks are what is under test.
"""

import re

import pytest
import yaml
from helpers import (
    ROOT,
    assert_stopped_before_any_job,
    job_counts,
    jobs,
    snakemake,
    stage_raw_files,
    write_yaml,
)

PRESETS = {  # preset -> (dataset, enabled experiments, experiments with a sweep)
    "cifar10": ("cifar10", {"ict", "bcm_scratch", "igct", "edm"}, 4),
    "imagenet64": ("imagenet64", {"ict", "bcm_ft", "igct", "edm"}, 4),
    "ffhq64": ("ffhq64", {"bcm_scratch"}, 1),
    "lsun256": ("lsun256", {"bcm_scratch"}, 1),
}
DEMO_EXPERIMENTS = ("ict", "bcm_ft", "bcm_scratch", "igct", "edm")


def test_lint_is_clean(tmp_path):
    res = snakemake(tmp_path, "--lint")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "Lints for" not in res.stdout, res.stdout[-3000:]


def test_demo_dag_of_all(tmp_path):
    res = snakemake(tmp_path, "-n", "-p", "all")
    assert res.returncode == 0, res.stdout[-3000:]
    n = len(DEMO_EXPERIMENTS)
    assert job_counts(res.stdout) == {
        "prep": 1,
        "run_config": n,
        "train": n,
        "eval_spec": n,
        "evaluate": n,
        "sample_grid": n,
        "app_grid": 6,
        "tables": 1,
        "training_curves": n,  # every demo experiment is trained (none imported)
        "all": 1,
    }
    trains = {
        re.search(r"exp=(\w+)", j["wildcards"])[1]: j
        for j in jobs(res.stdout)
        if j["rule"] == "train"
    }
    # BCM fine-tuning starts from the iCT network, so it waits for it; nothing else does.
    assert "results/digits/runs/ict/network-final.pt" in trains["bcm_ft"]["input"]
    assert all("network-final.pt" not in trains[e]["input"] for e in trains if e != "bcm_ft")
    # every heavy stage is one `bcm launch` job with the site's launcher file (training first writes
    # the runtime keys of its launch to runtime.json)
    launcher = str(ROOT / "cluster/local/launcher.yaml")
    for j in jobs(res.stdout):
        if j["rule"] in ("prep", "train", "evaluate", "sample_grid", "app_grid"):
            launch = j["shell"].split(" && ")[-1]
            assert launch.startswith(
                f"bcm launch --launcher {launcher} --job-dir results/digits/"
            ), j
        if j["rule"] == "train":  # squeue tells experiments apart: <dataset>-<experiment>-<stage>
            exp = re.search(r"results/digits/runs/([a-z_]+)/runtime\.json", j["shell"])[1]
            assert f"--name digits-{exp}-train " in j["shell"], j
            assert j["shell"].startswith("printf '%s\\n' '{"), j
            assert "/runtime.json && bcm launch" in j["shell"], j


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_dag_of_fid_table(tmp_path, preset):
    ds, exps, evaluated = PRESETS[preset]
    stage_raw_files(tmp_path, preset)
    res = snakemake(
        tmp_path,
        "-n",
        "-p",
        f"results/{ds}/fid_table.csv",
        "--configfile",
        str(ROOT / f"workflow/config/{preset}.yaml"),
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert job_counts(res.stdout) == {
        "prep": 1,
        "run_config": len(exps),
        "train": len(exps),
        "eval_spec": evaluated,
        "evaluate": evaluated,
        "tables": 1,
    }
    trained = {
        re.search(r"exp=(\w+)", j["wildcards"])[1] for j in jobs(res.stdout) if j["rule"] == "train"
    }
    assert trained == exps
    assert "digits" not in res.stdout  # the preset replaces the demo


def test_changing_one_stage_reruns_it_and_its_dependants_only(tmp_path):
    """Run the rules that write the settings (run configs, sweep specs) for real, so Snakemake
    records their params; mark the heavy outputs done with --touch; change one setting; read
    Snakemake's own plan from --summary."""
    res = snakemake(tmp_path, "--until", "run_config", "eval_spec")
    assert res.returncode == 0, res.stdout[-3000:]
    summary = snakemake(tmp_path, "--summary")
    assert summary.returncode == 0, summary.stdout[-3000:]
    outputs = [line.split("\t")[0] for line in summary.stdout.splitlines()[1:] if "\t" in line]
    for out in outputs:
        path = tmp_path / out
        if path.exists():
            continue
        if out.endswith("/plots"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    res = snakemake(tmp_path, "--touch", "-q", "all")
    assert res.returncode == 0, res.stdout[-3000:]

    def planned(*extra):
        res = snakemake(tmp_path, "--summary", *extra)
        assert res.returncode == 0, res.stdout[-3000:]
        rows = [line.split("\t") for line in res.stdout.splitlines()[1:] if "\t" in line]
        return {row[0] for row in rows if row[5] == "update pending"}

    assert planned() == set()
    lr = write_yaml(
        tmp_path / "lr.yaml",
        {"datasets": {"digits": {"experiments": {"bcm_scratch": {"train": {"lr": 1.0e-4}}}}}},
    )
    d = "results/digits"
    assert planned("--configfile", lr) == {
        f"{d}/runs/bcm_scratch/config.json",
        f"{d}/runs/bcm_scratch/network-final.pt",
        f"{d}/eval/bcm_scratch/fid_table.csv",
        f"{d}/eval/bcm_scratch/mse_table.csv",
        f"{d}/eval/bcm_scratch/guidance_table.csv",
        f"{d}/grids/bcm_scratch/samples.png",
        f"{d}/curves/bcm_scratch.png",
        f"{d}/fid_table.csv",
        f"{d}/mse_table.csv",
        f"{d}/guidance_table.csv",
        f"{d}/plots",
    }
    # iCT feeds BCM fine-tuning: retraining it retrains bcm_ft too, and nothing of the other three
    ict = write_yaml(
        tmp_path / "ict.yaml",
        {"datasets": {"digits": {"experiments": {"ict": {"loss": {"curriculum": {"s1": 80}}}}}}},
    )
    plan = planned("--configfile", ict)
    assert {p.split("/")[3] for p in plan if "/runs/" in p or "/eval/" in p or "/grids/" in p} == {
        "ict",
        "bcm_ft",
    }
    assert f"{d}/runs/bcm_ft/config.json" not in plan  # its own settings did not change
    # a sweep setting reruns that sweep only, never the training (the override must differ from the
    # demo's)
    demo = yaml.safe_load((ROOT / "workflow/config/config.yaml").read_text())
    assert demo["datasets"]["digits"]["experiments"]["edm"]["eval"]["guidance"]["ws"] != [1.0, 5.0]
    sweep = write_yaml(
        tmp_path / "sweep.yaml",
        {
            "datasets": {
                "digits": {
                    "experiments": {
                        "edm": {"eval": {"guidance": {"ws": [1.0, 5.0], "recipe": "edm-18"}}}
                    }
                }
            }
        },
    )
    assert planned("--configfile", sweep) == {
        f"{d}/eval/edm/spec.json",
        f"{d}/eval/edm/fid_table.csv",
        f"{d}/eval/edm/mse_table.csv",
        f"{d}/eval/edm/guidance_table.csv",
        f"{d}/fid_table.csv",
        f"{d}/mse_table.csv",
        f"{d}/guidance_table.csv",
        f"{d}/plots",
    }


def test_unknown_workflow_key_stops_before_any_job(tmp_path):
    bad = write_yaml(
        tmp_path / "bad.yaml", {"datasets": {"digits": {"experiments": {"ict": {"trian": {}}}}}}
    )
    res = snakemake(tmp_path, "--configfile", bad)
    assert_stopped_before_any_job(
        res, tmp_path, "config error at 'datasets.digits.experiments.ict'", "'trian' was unexpected"
    )


def test_unknown_run_config_key_stops_before_any_job(tmp_path):
    bad = write_yaml(
        tmp_path / "bad.yaml",
        {"datasets": {"digits": {"experiments": {"edm": {"model": {"net": {"chanels": 8}}}}}}},
    )
    res = snakemake(tmp_path, "--configfile", bad)
    assert_stopped_before_any_job(
        res, tmp_path, "datasets.digits.experiments.edm", "model.net.chanels"
    )


def test_missing_raw_files_stop_before_any_job(tmp_path):
    res = snakemake(tmp_path, "--configfile", str(ROOT / "workflow/config/cifar10.yaml"))
    assert_stopped_before_any_job(
        res,
        tmp_path,
        "dataset 'cifar10': raw files missing",
        "data/cifar10/cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/",
        "data/inception-2015-12-05.pt",
    )


def test_unknown_executor_stops_before_any_job(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    write_yaml(site / "launcher.yaml", {"executor": "pbs", "nodes": 1})
    res = snakemake(tmp_path, "--config", f"site={site}")
    assert_stopped_before_any_job(res, tmp_path, "launcher for stage 'prep'", "executor", "'pbs'")


def test_job_sizes_come_from_the_site_then_the_dataset(tmp_path):
    """stages.yaml sizes each stage's job; datasets.<ds>.launch.<stage> overrides it; neither is a
    rerun trigger (they travel as resources, not params)."""
    site = tmp_path / "site"
    site.mkdir()
    write_yaml(
        site / "launcher.yaml", {"executor": "slurm", "partition": "gpu", "gpus_per_node": 4}
    )
    write_yaml(
        site / "stages.yaml", {"train": {"nodes": 4, "gpus_per_node": 8}, "eval": {"nodes": 2}}
    )
    over = write_yaml(
        tmp_path / "over.yaml", {"datasets": {"digits": {"launch": {"eval": {"nodes": 1}}}}}
    )
    res = snakemake(tmp_path, "-n", "-p", "--config", f"site={site}", "--configfile", over)
    assert res.returncode == 0, res.stdout[-3000:]
    by_rule = {}
    for j in jobs(res.stdout):
        by_rule.setdefault(j["rule"], j["shell"])
    assert f"--launcher {site}/launcher.yaml" in by_rule["train"]
    assert "--nodes 4 --gpus-per-node 8 -- train" in by_rule["train"]
    assert "--nodes 1 -- eval" in by_rule["evaluate"]
    assert re.search(
        r"--job-dir \S+ --name [a-z0-9_]+-prep -- prep", by_rule["prep"]
    )  # no stage entry: the site file alone


def test_bad_stage_name_in_site_stops(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    write_yaml(site / "launcher.yaml", {"executor": "local"})
    write_yaml(site / "stages.yaml", {"training": {"nodes": 1}})
    res = snakemake(tmp_path, "--config", f"site={site}")
    assert_stopped_before_any_job(res, tmp_path, "stages.yaml: unknown stage 'training'")


@pytest.mark.parametrize(
    "preset,exp,fmt",
    [
        ("imagenet64", "bcm_authors", "bcm-ict-torch --kind bcm"),
        ("imagenet64", "edm_openai", "openai-cm --kind edm"),
        ("lsun256", "cd_lpips_openai", "openai-cm --kind cm"),
        ("cifar10", "igct_authors", "igct-edm"),
    ],
)
def test_imported_experiment_is_evaluated_without_training(tmp_path, preset, exp, fmt):
    """`import: {format, path}` experiments: left out (with where to put the file) until staged;
    then their evaluation, grid and applications run on `bcm import`'s network, with no training."""
    ds = PRESETS[preset][0]
    stage_raw_files(tmp_path, preset)
    cfg = ["--configfile", str(ROOT / f"workflow/config/{preset}.yaml")]
    spec = yaml.safe_load((ROOT / f"workflow/config/{preset}.yaml").read_text())
    path = spec["datasets"][ds]["experiments"][exp]["import"]["path"]
    res = snakemake(tmp_path, "-n", "all", *cfg)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"{path}  <- " in res.stdout and f"(experiment {exp})" in res.stdout
    assert f"/{exp}/" not in res.stdout.split("Job stats:")[1]  # not planned while missing
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).touch()  # staged (a dry run never reads it)
    targets = [f"results/{ds}/eval/{exp}/fid_table.csv", f"results/{ds}/grids/{exp}/samples.png"]
    res = snakemake(tmp_path, "-n", "-p", *targets, *cfg)
    assert res.returncode == 0, res.stdout[-3000:]
    assert job_counts(res.stdout) == {
        "prep": 1,
        "import_network": 1,
        "eval_spec": 1,
        "evaluate": 1,
        "sample_grid": 1,
    }
    (imp,) = [j for j in jobs(res.stdout) if j["rule"] == "import_network"]
    assert imp["shell"].startswith(
        f"bcm import --format {fmt} {path} --out results/{ds}/runs/{exp}/"
    )
    res = snakemake(tmp_path, "-n", "all", *cfg)  # and `all` now includes it
    assert res.returncode == 0 and f"results/{ds}/grids/{exp}/samples.png" in res.stdout


def test_demo_long_overlay_adds_cd_and_bcm_ft_steps_and_never_the_plain_demo(tmp_path):
    """`make demo-long` = the demo + workflow/config/demo_long.yaml (bcm_ft 3000 steps, the cd / bcd
    distillation runs); the overlay sits beside the presets but must not reach `make demo`
    (common.smk skips demo_*.yaml)."""
    import json

    def run_configs(cwd, *extra):
        cwd.mkdir()
        res = snakemake(cwd, "--until", "run_config", "--cores", "1", *extra)
        assert res.returncode == 0, res.stdout[-3000:]
        runs = cwd / "results/digits/runs"
        return {p.name: json.loads((p / "config.json").read_text()) for p in runs.iterdir()}

    plain = run_configs(tmp_path / "demo")
    long = run_configs(
        tmp_path / "long", "--configfile", str(ROOT / "workflow/config/demo_long.yaml")
    )
    assert plain["bcm_ft"]["train"]["total_steps"] == 300
    assert long["bcm_ft"]["train"]["total_steps"] == 3000
    long["bcm_ft"]["train"]["total_steps"] = 300
    assert "cd" not in plain and "bcd" not in plain
    assert long["cd"]["loss"]["kind"] == "cd" and long["bcd"]["loss"]["kind"] == "bcd"
    for exp in ("cd", "bcd"):  # the demo's EDM is the teacher
        assert long.pop(exp)["loss"]["teacher"] == "results/digits/runs/edm/network-final.pt"
    assert long == plain  # nothing else differs
