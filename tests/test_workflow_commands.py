"""The users' own commands, verbatim, in a fresh copy of the workflow: no -s, profile or configfile.

Snakemake finds workflow/Snakefile from the clone's root and applies workflow/profiles/default/ by
itself; every dataset of the presets is known by its results/<ds>/ target.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """What a user's clone holds of the workflow (the library: this tree, via PYTHONPATH)."""
    d = tmp_path_factory.mktemp("clone")
    ignore = shutil.ignore_patterns("__pycache__", ".snakemake", "results")
    for name in ("workflow", "cluster"):
        shutil.copytree(ROOT / name, d / name, ignore=ignore)
    shutil.copy(ROOT / "environment.yml", d)
    return d


def run(cwd, *args, timeout=300):
    """`snakemake ARGS` exactly as typed in `cwd` (stdout and stderr together)."""
    path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }
    cmd = ["timeout", "-k", "10", str(timeout), str(BIN / "snakemake"), *args]
    return subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def job_counts(out):
    table = out.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def assert_clean_stop(res, cwd, *needles):
    """Non-zero exit, the workflow's own message, no Python error, nothing run."""
    out = res.stdout
    assert res.returncode != 0, out[-3000:]
    assert "bcm workflow:" in out, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"
    for bad in ("Traceback", "KeyError", "Exception"):
        assert bad not in out, f"{bad!r} in:\n{out[-3000:]}"
    assert not (Path(cwd) / "results").exists()


def test_plain_demo_target_plans_the_demo(clone):
    res = run(clone, "-n", "results/digits/fid_table.csv")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "workflow specific profile workflow/profiles/default" in res.stdout
    assert job_counts(res.stdout) == {
        "prep": 1,
        "run_config": 5,
        "train": 5,
        "eval_spec": 5,
        "evaluate": 5,
        "tables": 1,
    }
    # the jobs run on this machine: the local launcher, chosen without any flag
    res = run(clone, "-n", "-p", "results/digits/runs/ict/network-final.pt")
    assert "bcm launch --launcher cluster/local/launcher.yaml" in res.stdout, res.stdout[-3000:]


@pytest.mark.parametrize("ds", ["imagenet64", "cifar10"])
def test_plain_preset_target_stops_with_the_raw_file_message(clone, ds):
    import yaml

    preset = yaml.safe_load((ROOT / f"workflow/config/{ds}.yaml").read_text())
    files = [r["path"] for r in preset["datasets"][ds]["raw"]]
    assert files
    res = run(clone, "-n", f"results/{ds}/fid_table.csv")
    assert_clean_stop(res, clone, f"dataset '{ds}': raw files missing", "Put them here", *files)


def test_preset_target_plans_once_its_files_are_staged(clone, tmp_path):
    """Any output under results/<ds>/ builds what it needs, from the preset's settings."""
    import yaml

    preset = yaml.safe_load((ROOT / "workflow/config/cifar10.yaml").read_text())
    for raw in preset["datasets"]["cifar10"]["raw"]:  # empty stand-ins: a dry run only checks them
        path = tmp_path / raw["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch() if path.suffix else path.mkdir(exist_ok=True)
    snakefile = str(clone / "workflow/Snakefile")
    res = run(tmp_path, "-s", snakefile, "-n", "results/cifar10/grids/igct/samples.png")
    assert res.returncode == 0, res.stdout[-3000:]
    assert job_counts(res.stdout) == {"prep": 1, "run_config": 1, "train": 1, "sample_grid": 1}
    # `all` still builds the demo only: the presets' datasets are known, not enabled
    res = run(tmp_path, "-s", snakefile, "-n", "all")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "results/digits/fid_table.csv" in res.stdout and "results/cifar10" not in res.stdout
    # --configfile <preset> still enables its dataset for `all` (and disables the demo)
    res = run(
        tmp_path,
        "-s",
        snakefile,
        "-n",
        "all",
        "--configfile",
        str(clone / "workflow/config/cifar10.yaml"),
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert "results/cifar10/fid_table.csv" in res.stdout and "results/digits" not in res.stdout


def test_unknown_dataset_names_the_known_ones(clone):
    res = run(clone, "-n", "results/nosuch/fid_table.csv")
    assert_clean_stop(
        res,
        clone,
        "unknown dataset 'nosuch'",
        "known: cifar10, digits, ffhq64, imagenet64, lsun256",
    )


def test_plain_lint_is_clean(clone):
    res = run(clone, "--lint")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "Lints for" not in res.stdout, res.stdout[-3000:]


def test_the_default_profile_leaves_the_slurm_profile_as_it_is(clone):
    """Snakemake lays workflow/profiles/default over --profile key by key: the Slurm settings must
    survive it, and stages sent to Slurm must not queue behind one another for the local slot."""
    res = run(clone, "-n", "--profile", "cluster/slurm", "results/digits/runs/ict/network-final.pt")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "Using profiles cluster/slurm and workflow specific profile" in res.stdout
    assert "cluster/slurm/launcher.yaml" in res.stdout  # site=cluster/slurm, not the default
    train = res.stdout.split("rule train:")[1].split("\n\n")[0]
    assert re.search(r"resources: .*launches=0", train), train
    res = run(clone, "-n", "results/digits/runs/ict/network-final.pt")
    train = res.stdout.split("rule train:")[1].split("\n\n")[0]
    # cluster/local on CPUs: cpus_per_task 1, no slot: stages run side by side on the cores
    assert re.search(r"resources: .*launches=0", train) and "threads:" not in train, train


def test_local_stages_take_their_cores_or_the_gpu_slot(clone, tmp_path):
    """A local CPU stage takes tasks x cpus_per_task of Snakemake's cores; one with GPUs takes the
    single `launches` slot (it uses every GPU), whatever its threads."""
    import yaml

    over = tmp_path / "over.yaml"
    launch = {"train": {"cpus_per_task": 2}, "eval": {"gpus_per_node": 1}}
    over.write_text(yaml.safe_dump({"datasets": {"digits": {"launch": launch}}}))
    res = run(
        clone, "-n", "results/digits/fid_table.csv", "--cores", "4", "--configfile", str(over)
    )
    assert res.returncode == 0, res.stdout[-3000:]
    train = res.stdout.split("rule train:")[1].split("\n\n")[0]
    assert re.search(r"threads: 2\b", train) and "launches=0" in train, train
    evaluate = res.stdout.split("rule evaluate:")[1].split("\n\n")[0]
    assert "launches=1" in evaluate and "threads:" not in evaluate, evaluate


def test_runtime_keys_rerun_nothing_identity_keys_rerun_training(clone, tmp_path):
    """Write the run config for real (Snakemake records its params), mark the training done, then
    change one key at a time and read Snakemake's plan."""
    import yaml

    snakefile = str(clone / "workflow/Snakefile")
    net = "results/digits/runs/ict/network-final.pt"
    res = run(tmp_path, "-s", snakefile, "results/digits/runs/ict/config.json")
    assert res.returncode == 0, res.stdout[-3000:]
    written = (tmp_path / "results/digits/runs/ict/config.json").read_text()
    assert '"lr"' in written and "batch_gpu" not in written and "status_every" not in written
    for path in ("results/digits/shards/manifest.json", net):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    res = run(tmp_path, "-s", snakefile, "--touch", net)
    assert res.returncode == 0, res.stdout[-3000:]

    def override(train=None, data=None):
        exp = {"train": train or {}, "data": data or {}}
        over = tmp_path / "over.yaml"
        over.write_text(yaml.safe_dump({"datasets": {"digits": {"experiments": {"ict": exp}}}}))
        return str(over)

    def plan(**change):
        res = run(tmp_path, "-s", snakefile, "-n", net, "--configfile", override(**change))
        assert res.returncode == 0, res.stdout[-3000:]
        return {} if "Nothing to be done" in res.stdout else job_counts(res.stdout)

    assert plan() == {}
    assert plan(train={"batch_gpu": 8}) == {}
    cadences = {"status_every": 5, "checkpoint_every": 10, "snapshot_every": 20, "keep_last": 1}
    device = {"tf32": False, "compile": True, "channels_last": True, "deterministic": True}
    data = {"num_workers": 4, "prefetch": 2, "verify_sha256": True, "in_memory": False}
    assert plan(train={**cadences, **device}, data=data) == {}
    # identity keys and the length rerun the training stage (the loop then restarts or continues)
    assert plan(train={"lr": 2.0e-3}) == {"run_config": 1, "train": 1}
    assert plan(train={"total_steps": 320}) == {"run_config": 1, "train": 1}
    # the next training job that runs gets the runtime keys in use then, in runtime.json
    over = override(train={"batch_gpu": 8})
    res = run(tmp_path, "-s", snakefile, "-n", "-p", "-f", net, "--configfile", over)
    shell = res.stdout.split("Shell command: ")[1].split("\n")[0]
    assert '"batch_gpu": 8' in shell and "> results/digits/runs/ict/runtime.json" in shell, shell
