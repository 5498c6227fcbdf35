"""The workflow on the live dev Slurm cluster (cluster/dev: two emulated nodes, fake GPUs,
accounting).

`snakemake --profile cluster/slurm` on a shrunk demo: heavy stages are submitted by `bcm launch`
(submitit) as one job each, training as a 2-node job (one task per node, gloo); the light `tables`
rule goes through the Snakemake Slurm executor plugin. Every wait has a deadline and snakemake runs
under `timeout -k`.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
RUN = "results/digits/runs/ict"


def tiny_config(path, total_steps=6, **train):
    """The demo shrunk to iCT alone: its tiny net, a few steps of batch 8, a 100-sample sweep."""
    cfg = {
        "datasets": {
            "digits": {
                "prep": {"args": {"workers": 1}},
                "defaults": {
                    "train": {
                        "total_steps": total_steps,
                        "batch": 8,
                        "status_every": 2,
                        "checkpoint_every": 2,
                        **train,
                    }
                },
                "experiments": {
                    "ict": {"eval": {"samplers": [{"recipe": "demo-nfe1"}]}},
                    **{e: {"enabled": False} for e in ("bcm_ft", "bcm_scratch", "igct", "edm")},
                },
                "eval": {"num_samples": 100, "batch_size": 100, "inversion_count": 8},
            }
        }
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def site(cwd, train_nodes=2):
    """A launcher site for the dev cluster: training on `train_nodes` nodes x 1 fake GPU (1 task
    each)."""
    d = cwd / "site"
    d.mkdir(exist_ok=True)
    (d / "launcher.yaml").write_text(
        yaml.safe_dump(
            {"executor": "slurm", "time_min": 10, "cpus_per_task": 1, "signal_delay_s": 30}
        )
    )
    (d / "stages.yaml").write_text(
        yaml.safe_dump({"train": {"nodes": train_nodes, "gpus_per_node": 1}})
    )
    return d


def run_snakemake(cwd, target, timeout=420, config=None, *extra):
    """Snakemake in its own session (a process group the tests can kill whole, like a closed login
    shell)."""
    (config or tiny_config)(cwd / "tiny.yaml")
    cmd = [
        "timeout",
        "-k",
        "15",
        str(timeout),
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "workflow/Snakefile"),
        "--profile",
        str(ROOT / "cluster/slurm"),
        target,
        *extra,
        "--config",
        f"site={site(cwd)}",
        "--configfile",
        str(cwd / "tiny.yaml"),
    ]
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc, deadline_s):
    try:
        out, _ = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"snakemake still running after {deadline_s} s:\n{out[-3000:]}")
    return proc.returncode, out


def job_ids(job_dir):
    return sorted(int(p.name) for p in Path(job_dir).glob("[0-9]*") if p.is_dir())


def sacct(job_id, fields, since):
    """Slurm's accounting rows of one job (every incarnation: -D), only those since `since` (the dev
    cluster restarts job ids from 1 while its database keeps earlier runs)."""
    out = subprocess.run(
        ["sacct", "-j", str(job_id), "-X", "-n", "-P", "-D", "-S", since, "-o", fields],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def wait_for(predicate, deadline_s, what):
    end = time.time() + deadline_s
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {deadline_s} s waiting for {what}")


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def test_fid_table_with_two_node_training(tmp_path):
    since = now()
    rc, out = finish(run_snakemake(tmp_path, "results/digits/fid_table.csv"), 480)
    assert rc == 0, out[-4000:]
    table = (tmp_path / "results/digits/fid_table.csv").read_text().splitlines()
    assert table[0].startswith("model,kind,sampler,nfe") and table[1].startswith(
        "ict,cm,demo-nfe1,1,"
    )
    (train_job,) = job_ids(tmp_path / RUN / "jobs")
    # Slurm's own record: one job on 2 nodes, completed
    assert sacct(train_job, "NNodes,State", since) == [["2", "COMPLETED"]]
    assert "2 process(es)" in (tmp_path / RUN / "log.txt").read_text()


def squeue_state(job):
    return subprocess.run(
        ["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True, timeout=30
    ).stdout.strip()


def test_requeued_training_resumes_bitwise(tmp_path):
    """Two identical stages run side by side; Slurm requeues one right after its first checkpoint
    (its tasks get SIGKILL KillWait = 5 s later). Both finish, and their final networks are bitwise
    equal."""
    since = now()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    config = lambda p: tiny_config(p, total_steps=100, checkpoint_every=5)
    target = f"{RUN}/network-final.pt"
    procs = [run_snakemake(d, target, config=config) for d in (a, b)]
    try:
        wait_for(
            lambda: job_ids(a / RUN / "jobs") and list((a / RUN).glob("training-state-*.pt")),
            300,
            "the first training checkpoint",
        )
        (job,) = job_ids(a / RUN / "jobs")
        subprocess.run(["scontrol", "requeue", str(job)], check=True, timeout=30)
        wait_for(lambda: squeue_state(job) == "PENDING", 120, f"job {job} back in the queue")
        # a requeued job waits ~2 min for its begin time; as root, pull it forward (never to `now`)
        subprocess.run(
            ["scontrol", "update", f"JobId={job}", "StartTime=now+5"], check=True, timeout=30
        )
        results = [finish(p, 420) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, out in results:
        assert rc == 0, out[-4000:]
    assert [row[0] for row in sacct(job, "State", since)] == ["REQUEUED", "COMPLETED"]
    log = (a / RUN / "log.txt").read_text()
    assert "resumed from training-state-" in log, (
        f"not requeued before it finished (make it longer):\n{log}"
    )
    nets = [
        torch.load(d / target, map_location="cpu", weights_only=True)["state_dict"] for d in (a, b)
    ]
    assert nets[0].keys() == nets[1].keys()
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


def test_rerun_after_the_login_session_died_waits_for_the_running_job(tmp_path):
    """SIGKILL to Snakemake and its `bcm launch` while training runs on Slurm: the job runs on.
    Rerunning the same command (after `--unlock`) waits for that job; it must not submit a second
    one into the same run dir."""
    since = now()
    config = lambda p: tiny_config(p, total_steps=400, checkpoint_every=5)
    target, jobs = f"{RUN}/network-final.pt", tmp_path / RUN / "jobs"
    first = run_snakemake(tmp_path, target, config=config)
    try:
        wait_for(
            lambda: job_ids(jobs) and list((tmp_path / RUN).glob("training-state-*.pt")),
            300,
            "the first training checkpoint",
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    (job,) = job_ids(jobs)
    assert squeue_state(job) == "RUNNING" and (jobs / "active-job.json").is_file()
    rc, out = finish(run_snakemake(tmp_path, target, 120, config, "--unlock"), 150)
    assert rc == 0, out[-3000:]
    rc, out = finish(run_snakemake(tmp_path, target, config=config), 420)
    assert rc == 0, out[-4000:]
    assert (
        f"slurm job {job} of this command, submitted by an earlier bcm launch, is RUNNING" in out
    ), out[-4000:]
    assert job_ids(jobs) == [job] and sacct(job, "State", since) == [["COMPLETED"]]
    assert "resumed from" not in (tmp_path / RUN / "log.txt").read_text()  # one uninterrupted run
    assert (tmp_path / target).is_file() and not (jobs / "active-job.json").exists()


def test_broken_config_fails_fast_with_the_jobs_error(tmp_path):
    """A batch that 2 processes cannot split is only detectable inside the job: the rule must fail
    within a bounded time and the job's error must reach the user."""
    start = time.time()
    rc, out = finish(
        run_snakemake(
            tmp_path, f"{RUN}/network-final.pt", config=lambda p: tiny_config(p, batch=3)
        ),
        300,
    )
    assert rc != 0
    assert time.time() - start < 300
    assert re.search(r"train\.batch: 3 is not divisible by the number of processes \(2\)", out), (
        out[-4000:]
    )
    assert "Error in rule train" in out
