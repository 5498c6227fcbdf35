"""Consistency distillation in the real training loop: a CD run with a target EMA resumes bitwise
after SIGKILL (target network included), and a new teacher starts the run over."""

import json
import random

import pytest
from helpers import (
    TINY_BCM,
    TINY_CM,
    assert_same_state,
    final_state,
    make_run,
    run_and_kill,
    run_to_end,
)

from bcmcore.nets import ModelConfig, NetConfig, build_model, save_network
from bcmcore.train import training_loop


def teacher_file(path):
    """A tiny EDM denoiser on the 2-D data (untrained: the loop, not the teacher, is under test)."""
    cfg = ModelConfig(kind="edm", net=NetConfig(arch="mlp", data_channels=2, channels=16))
    save_network(path, build_model(cfg), 0, {"note": "test teacher"})
    return str(path)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind, model", [("cd", TINY_CM), ("bcd", TINY_BCM)])
def test_cd_resume_after_sigkill_is_bitwise(tmp_path, shards, kind, model):
    loss = {"kind": kind, "teacher": teacher_file(tmp_path / "edm.pt"), "target_ema": 0.9}
    loss["num_points"] = 6
    steps, kill = 12, random.Random().randint(4, 10)
    ref = make_run(tmp_path / "ref", shards, model, loss, total_steps=steps, checkpoint_every=3)
    run = make_run(tmp_path / "run", shards, model, loss, total_steps=steps, checkpoint_every=3)
    run_to_end(ref)
    run_and_kill(run, kill)
    assert not (run / "network-final.pt").exists()
    out = run_to_end(run)
    assert "resumed from training-state-" in out, out
    a, b = final_state(ref), final_state(run)
    assert "target" in a["loss"]  # theta- is part of the state
    assert_same_state(a, b)
    row = json.loads((run / "stats.jsonl").read_text().splitlines()[-1])
    assert "loss_cd" in row


def test_a_new_teacher_starts_the_run_over(tmp_path, shards):
    loss = {"kind": "cd", "teacher": teacher_file(tmp_path / "edm.pt"), "teacher_id": "a"}
    run = make_run(tmp_path / "run", shards, TINY_CM, loss, total_steps=2)
    training_loop(run, device="cpu")
    cfg = json.loads((run / "config.json").read_text())
    cfg["loss"]["teacher_id"] = "b"  # the workflow's digest of the teacher experiment changed
    cfg["train"]["total_steps"] = 4
    (run / "config.json").write_text(json.dumps(cfg))
    training_loop(run, device="cpu")
    log = (run / "log.txt").read_text()
    assert "other identity keys" in log and "loss.teacher_id 'a' -> 'b'" in log
    assert (run / "superseded-1").is_dir()
