"""Data-parallel training with real torch.distributed (gloo, 2 CPU processes): equivalence and
bitwise resume."""

import random

import pytest
import torch
from helpers import assert_same_state, final_state, make_run, run_and_kill, run_to_end

from bcmcore.train import training_loop


@pytest.mark.timeout(600)
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, shards):
    """BCT loss, batch 16: 2 ranks x 8 samples == 1 process x 2 accumulation rounds of 8 (float
    tolerance).

    Chunk c = round * world + rank sees the same data positions and the same noise seed in both
    layouts, so only the gradient averaging differs: a missing or wrong all-reduce (sum instead of
    mean, a rank left out) breaks the equality.
    """
    one = make_run(tmp_path / "one", shards, total_steps=5, batch_gpu=8)
    two = make_run(tmp_path / "two", shards, total_steps=5, batch_gpu=8)
    training_loop(one)
    out = run_to_end(two, world=2)
    assert "2 process(es)" in out and "8 x 1 rounds x 2" in out, out
    a, b = final_state(one), final_state(two)
    assert_same_state(a, b, exact=False)
    # not vacuous: a rank that used only its own gradient would land elsewhere
    solo = make_run(tmp_path / "solo", shards, total_steps=5, batch=8)
    training_loop(solo)
    diff = max((a["net"][k] - final_state(solo)["net"][k]).abs().max().item() for k in a["net"])
    assert diff > 1e-4


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_after_sigkill_is_bitwise_world2(tmp_path, shards):
    # killed after step 4 or later: the first state (step 3) is complete by then, so there is a
    # state to resume
    steps, kill = 10, random.Random().randint(4, 8)
    ref = make_run(tmp_path / "ref", shards, total_steps=steps, checkpoint_every=3)
    run = make_run(tmp_path / "run", shards, total_steps=steps, checkpoint_every=3)
    run_to_end(ref, world=2)
    run_and_kill(run, kill, world=2)
    out = run_to_end(run, world=2)
    assert "resumed from training-state-" in out, out
    assert_same_state(final_state(ref), final_state(run))
    a, b = (torch.load(r / "network-final.pt", weights_only=True)["state_dict"] for r in (ref, run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plain_slurm_task_variables_become_torch_distributed_ones(monkeypatch):
    """`srun python -m bcmcore train ...` (no torchrun, no submitit): rank/world/master from
    SLURM_*."""
    from bcmcore import dist

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first, so that monkeypatch restores the key's absence after _slurm_env() sets it:
        # a leaked WORLD_SIZE=4 makes every later `bcm train` subprocess wait for 3 peers forever.
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the first node name is taken as is
    for key, value in dict(
        SLURM_PROCID="3",
        SLURM_NTASKS="4",
        SLURM_LOCALID="1",
        SLURM_STEP_ID="0",
        SLURM_JOB_ID="1234",
        SLURM_JOB_NODELIST="gpu7,gpu8",
    ).items():
        monkeypatch.setenv(key, value)
    dist._slurm_env()
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == (
        "3",
        "4",
        "1",
    )
    assert os.environ["MASTER_ADDR"] == "gpu7" and os.environ["MASTER_PORT"] == str(20000 + 1234)
    # a one-task batch step is a single process, whatever the allocation
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    dist._slurm_env()
    assert "RANK" not in os.environ
