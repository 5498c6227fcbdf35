"""The dev Slurm cluster (cluster/dev) and the wrapper `make test` runs under."""

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[1]


def run(*cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_two_nodes_with_fake_gpus_and_accounting():
    nodes = run("sinfo", "-h", "-N", "-o", "%N %G").stdout.split("\n")
    assert sorted(n.strip() for n in nodes if n.strip()) == ["node1 gpu:2", "node2 gpu:2"]
    out = run(
        "srun",
        "-N2",
        "--ntasks-per-node=1",
        "--gpus-per-node=1",
        "bash",
        "-c",
        'echo "$SLURMD_NODENAME $CUDA_VISIBLE_DEVICES"',
    )
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:2]) == ["node1 0", "node2 0"]
    assert run("sacct", "-X", "-n", "-P", "-o", "JobID,State").returncode == 0  # slurmdbd answers


def test_with_slurm_reuses_a_running_cluster_and_returns_the_exit_code():
    out = run(
        "bash",
        str(ROOT / "cluster/dev/with_slurm.sh"),
        "bash",
        "-c",
        'echo "required=$SLURM_REQUIRED"; exit 7',
    )
    assert out.returncode == 7
    assert "already running" in out.stdout and "required=1" in out.stdout
    assert run("scontrol", "ping").returncode == 0  # it did not stop what it did not start
