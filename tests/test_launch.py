"""`bcm launch` through submitit: local (2 gloo tasks) and debug executors, failures, deadline,
requeue.

The slurm executor runs against the live dev cluster in the WORKFLOW engineer's
tests/test_slurm*.py; here its sbatch script is checked without submitting.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY_CM, make_run

from bcmcore import cli
from bcmcore.cli.launch import launch as main
from bcmcore.config import ConfigError, UserError
from bcmcore.launch import LauncherConfig, load_launcher, make_executor, submit, wait

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def bcm_launch(*args, timeout=600, sigint_ignored=False, env=ENV):
    """`bcm launch` in a subprocess; sigint_ignored: started as a shell's background job (nohup ...
    &) is."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.run(
        [sys.executable, "-m", "bcmcore", "launch", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=ignore,
    )


@pytest.mark.timeout(600)
def test_local_executor_runs_a_two_task_training_job(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, total_steps=3)
    r = bcm_launch("--executor", "local", "--tasks-per-node", 2, "--", "train", "--run-dir", run)
    assert r.returncode == 0, r.stdout + r.stderr
    # the job's rank-0 log was streamed to our stdout; both tasks joined one gloo group
    assert "2 process(es) on cpu (1 threads each), batch 16 = 8 x 1 rounds x 2" in r.stdout, (
        r.stdout
    )
    assert "step 3/3" in r.stdout and (run / "network-final.pt").is_file()
    assert (
        len(list((run / "submitit").glob("*/*_1_log.out"))) == 1
    )  # task 1 ran, logs under RUN_DIR/submitit


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch takes 1 thread anyway")
def test_a_local_task_takes_cpus_per_task_threads(tmp_path, shards):
    """Without cpus_per_task torch would take every core, and two stages side by side (the local
    profile) would oversubscribe them."""
    run = make_run(tmp_path / "run", shards, total_steps=1)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    args = ("--executor", "local", "--cpus-per-task", 1, "--job-dir", tmp_path / "jobs")
    r = bcm_launch(*args, "--", "train", "--run-dir", run, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 process(es) on cpu (1 threads each)" in r.stdout, r.stdout


def test_debug_executor_runs_in_process(tmp_path, shards, capsys):
    run = make_run(tmp_path / "run", shards, total_steps=2)
    launcher = tmp_path / "debug.yaml"
    launcher.write_text("executor: debug\ntime_min: 5\n")
    assert (
        main(
            [
                "--launcher",
                str(launcher),
                "--job-dir",
                str(tmp_path / "jobs"),
                "--",
                "train",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    assert (run / "network-final.pt").is_file()
    assert "1 process(es)" in capsys.readouterr().out


def test_failed_job_returns_nonzero_with_the_error(tmp_path, shards, capsys, monkeypatch):
    # a user error inside the job: bcm's exit code 2 and its one-line message
    run = make_run(tmp_path / "bad", shards, loss={"kind": "nope"})
    assert main(["--executor", "debug", "--", "train", "--run-dir", str(run)]) == 2
    assert "loss.kind: unknown loss 'nope'" in capsys.readouterr().err
    # a 3-channel net on 2-D data is a user error too now (checked against the manifest)
    mismatch = make_run(
        tmp_path / "mismatch",
        shards,
        model={**TINY_CM, "net": {**TINY_CM["net"], "data_channels": 3}},
        loss={"kind": "ict"},
    )
    assert main(["--executor", "debug", "--", "train", "--run-dir", str(mismatch)]) == 2
    assert "expects vectors of dim 3" in capsys.readouterr().err
    # a crash inside the job (a bug of ours, not bad input): exit code 1 and the traceback's tail
    from bcmcore.train import loop

    def crash(*args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(loop, "_train", crash)
    assert main(["--executor", "debug", "--", "train", "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert "bcm launch: job" in err and "failed" in err and "Error" in err, err


@pytest.mark.timeout(300)
def test_local_job_failure_and_bad_command(tmp_path):
    r = bcm_launch(
        "--executor",
        "local",
        "--job-dir",
        tmp_path / "jobs",
        "--",
        "train",
        "--run-dir",
        tmp_path / "missing",
    )
    assert r.returncode == 2 and "config.json: run config not found" in r.stderr, r.stderr
    r = bcm_launch("--executor", "local", "--job-dir", tmp_path / "jobs")
    assert r.returncode == 2 and "missing the bcm command after '--'" in r.stderr


def test_launcher_file_errors(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("executor: pbs\n")
    with pytest.raises(
        ConfigError, match=r"site\.yaml\.executor: expected one of \['slurm', 'local', 'debug'\]"
    ):
        load_launcher(bad)
    bad.write_text("executor: slurm\ngpus: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key '.*site\.yaml\.gpus'"):
        load_launcher(bad)
    with pytest.raises(UserError, match="nope.yaml: launcher file not found"):
        load_launcher(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="executor 'debug' runs one task"):
        load_launcher(None, executor="debug", tasks_per_node=2)
    with pytest.raises(ConfigError, match="executor 'local' has one node"):
        load_launcher(None, executor="local", nodes=2)


@pytest.mark.slurm  # submitit's SlurmExecutor needs `srun` on PATH even to write the script
def test_slurm_executor_settings_reach_sbatch(tmp_path):
    site = tmp_path / "slurm.yaml"
    site.write_text(
        "executor: slurm\nnodes: 1\ngpus_per_node: 8\npartition: gpu\naccount: proj\nqos: normal\n"
        "constraint: h100\ntime_min: 600\nmem_gb: 200\ncpus_per_task: 10\n"
        "sbatch_extra: {exclusive: true}\nsetup: ['module load cuda']\n"
    )
    # CLI overrides per stage win over the file
    cfg = load_launcher(site, nodes=4, time_min=120)
    assert cfg.num_tasks == 32  # one task per GPU
    text = make_executor(cfg, tmp_path / "jobs", "bcm-train")._executor._make_submission_file_text(
        "CMD", "u"
    )
    for line in (
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--partition=gpu",
        "--account=proj",
        "--qos=normal",
        "--constraint=h100",
        "--time=120",
        "--mem=200GB",
        "--cpus-per-task=10",
        "--exclusive",
        "--signal=USR2@120",
        "--job-name=bcm-train",
    ):
        assert f"#SBATCH {line}\n" in text, (line, text)
    assert "module load cuda" in text
    default_mem = make_executor(load_launcher(site, mem_gb=0), tmp_path / "jobs")._executor
    assert "--mem" not in default_mem._make_submission_file_text(
        "CMD", "u"
    )  # 0: the cluster's default


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background-job"])
def test_deadline_cancels_the_job(tmp_path, shards, sigint_ignored):
    """Also from a background job, whose SIGINT is ignored and would be inherited by submitit's
    local controller: its cancel() is a SIGINT, so the controller and the training task would run
    on, holding our output pipes."""
    run = make_run(tmp_path / "run", shards, total_steps=10**6, status_every=1000)
    t0 = time.time()
    r = bcm_launch(
        "--executor",
        "local",
        "--deadline-min",
        0.05,
        "--",
        "train",
        "--run-dir",
        run,
        timeout=150,
        sigint_ignored=sigint_ignored,
    )
    assert r.returncode == 124 and "cancelled" in r.stderr, r.stderr
    assert time.time() - t0 < 120


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_preempted_local_job_requeues_and_resumes(tmp_path, shards):
    """USR2 (what Slurm sends before preemption/timeout): checkpoint() resubmits, the rerun
    resumes."""
    run = make_run(tmp_path / "run", shards, total_steps=400, checkpoint_every=5, status_every=50)
    cfg = LauncherConfig(executor="local", time_min=30)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        job = submit(["train", "--run-dir", str(run)], cfg, tmp_path / "jobs", None, cli.main)
    finally:
        os.environ.pop("OMP_NUM_THREADS")
    deadline = time.time() + 300
    while not list(run.glob("training-state-*.pt")):
        assert time.time() < deadline and not job.done(), "no checkpoint appeared"
        time.sleep(0.5)
    # Slurm signals the tasks (USR2) before preemption/timeout; locally the controller only forwards
    # its own timeout signal, so signal the task process directly.
    tasks = subprocess.run(
        ["pgrep", "-P", str(job._process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(tasks) == 1, tasks
    os.kill(int(tasks[0]), signal.SIGUSR2)
    assert wait(job, deadline_s=500, stream=False) == 0
    log = (run / "log.txt").read_text()
    assert "resumed from training-state-" in log, log
    assert json.loads((run / "stats.jsonl").read_text().splitlines()[-1])["step"] == 400
    assert (run / "network-final.pt").is_file()


def test_bcm_launch_and_the_workflow_side_do_not_import_torch():
    """`bcm launch` only waits for its job (one per workflow stage), and the Snakefile imports the
    launcher to size jobs: importing torch there costs seconds per stage and per DAG evaluation."""
    code = (
        "import sys\n"
        "from bcmcore.cli import main\n"
        "import bcmcore.launch\n"
        "try:\n"
        "    main(['launch', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def test_default_job_name_tells_experiments_apart():
    """squeue shows <dataset>-<experiment>-<command> for a run directory of the workflow's
    layout (was bcm-<command> for every job)."""
    from bcmcore.launch import job_name

    assert job_name(["train", "--run-dir", "results/digits/runs/bcm_ft"]) == "digits-bcm_ft-train"
    assert job_name(["train", "--run-dir", "/scratch/x/results/cifar10/runs/ict/"]) == (
        "cifar10-ict-train"
    )
    assert job_name(["eval", "--spec", "s.json"]) == "bcm-eval"
