"""The training loop on CPU: bitwise resume after SIGKILL, accumulation, fine-tuning init, bad
input.

Its helpers (tiny run configs, subprocess runs) are in helpers.py, the gmm2d shards fixture in
conftest.py.
"""

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from helpers import (
    TINY_BCM,
    TINY_CM,
    assert_same_state,
    final_state,
    make_run,
    run_and_kill,
    run_to_end,
)

from bcmcore.config import ConfigError, UserError
from bcmcore.train import TrainConfig, training_loop
from bcmcore.train.checkpoint import find_states

# ------------------------------------------------------------------------------------------ resume


@pytest.mark.timeout(600)
def test_resume_after_sigkill_is_bitwise_world1(tmp_path, shards):
    # killed after step 4 or later: the first state (step 3) is complete by then, so there is a
    # state to resume
    steps, kill = 12, random.Random().randint(4, 10)
    ref = make_run(tmp_path / "ref", shards, total_steps=steps, checkpoint_every=3)
    run = make_run(tmp_path / "run", shards, total_steps=steps, checkpoint_every=3)
    run_to_end(ref)
    run_and_kill(run, kill)
    assert not (run / "network-final.pt").exists()
    out = run_to_end(run)  # the same command again
    assert "resumed from training-state-" in out, out
    assert_same_state(final_state(ref), final_state(run))
    assert [s for s, _ in find_states(run)] == [9, 12]  # keep_last = 2
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == steps and {"loss", "loss_ct", "sec_per_kimg", "mem_gb"} <= set(
        rows[-1]
    )


def test_a_state_with_the_old_data_position_resumes_bitwise(tmp_path, shards):
    """States no longer carry `data.start_sample` (the loader starts at step * batch); states
    written before, which do, still resume, to the same bits as an uninterrupted run."""
    ref = make_run(tmp_path / "ref", shards, total_steps=4, checkpoint_every=2, keep_last=3)
    run = make_run(tmp_path / "run", shards, total_steps=4, checkpoint_every=2, keep_last=3)
    training_loop(ref)
    training_loop(run)
    assert "data" not in final_state(ref)  # the write-only key is gone
    old = run / "training-state-0000002.pt"
    state = torch.load(old, weights_only=True)
    state["data"] = {"start_sample": 2 * 16}  # as the old code wrote it
    torch.save(state, old)
    for p in (run / "training-state-0000004.pt", run / "network-final.pt"):
        p.unlink()
    training_loop(run)
    assert "resumed from training-state-0000002.pt" in (run / "log.txt").read_text()
    assert_same_state(final_state(ref), final_state(run))
    assert (run / "network-final.pt").read_bytes() == (ref / "network-final.pt").read_bytes()


def test_per_step_quantities_are_computed_once(tmp_path, shards, monkeypatch):
    """The batch split and the backend flags once per start, the lr once per step; the status
    row reports the lr of the step just taken (warm-up makes each step's differ)."""
    from bcmcore.train import device as device_keys

    calls = {"split_batch": 0, "lr_at": 0, "configure_backends": 0}

    def counted(name, fn):
        def wrapper(*args, **kw):
            calls[name] += 1
            return fn(*args, **kw)

        return wrapper

    for name in ("split_batch", "lr_at"):
        monkeypatch.setattr(TrainConfig, name, counted(name, getattr(TrainConfig, name)))
    configure = counted("configure_backends", device_keys.configure_backends)
    monkeypatch.setattr(device_keys, "configure_backends", configure)
    run = make_run(tmp_path / "run", shards, total_steps=5, warmup_steps=4, status_every=1)
    training_loop(run)
    assert calls == {"split_batch": 1, "lr_at": 5, "configure_backends": 1}
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    lr = 1e-3  # make_run's
    assert [r["lr"] for r in rows] == pytest.approx([lr / 4, lr / 2, 3 * lr / 4, lr, lr])


def test_rerun_after_completion_does_nothing(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, total_steps=2)
    training_loop(run)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    training_loop(run)
    after = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != "log.txt"}
    assert after == {k: v for k, v in before.items() if k != "log.txt"}
    assert "nothing to do" in (run / "log.txt").read_text()


# ------------------------------------------------------------------------------------------
# accumulation


@dataclass(frozen=True)
class _NoConfig:
    pass


class DeterministicMSE:
    """A noise-free loss, so batch_gpu = 16 and 4 x 4 rounds see identical per-sample terms."""

    Config = _NoConfig

    def __init__(self, cfg, model_cfg):
        self.calls = 0

    def __call__(self, model, batch, step, total_steps):
        x = batch["x"]
        loss = ((model(x + 0.5, 1.0) - x) ** 2).mean()
        return {"loss": loss, "half": loss.detach() / 2}


class NaNAtStep3(DeterministicMSE):
    def __call__(self, model, batch, step, total_steps):
        out = super().__call__(model, batch, step, total_steps)
        return {"loss": out["loss"] * (float("nan") if step == 3 else 1.0)}


@pytest.fixture
def extra_losses():
    from bcmcore.losses import LOSSES

    LOSSES.update({"test-mse": DeterministicMSE, "test-nan": NaNAtStep3})
    yield
    LOSSES.pop("test-mse")
    LOSSES.pop("test-nan")


def test_gradient_accumulation_matches_full_batch(tmp_path, shards, extra_losses):
    full = make_run(
        tmp_path / "full", shards, model=TINY_CM, loss={"kind": "test-mse"}, total_steps=4
    )
    acc = make_run(
        tmp_path / "acc",
        shards,
        model=TINY_CM,
        loss={"kind": "test-mse"},
        total_steps=4,
        batch_gpu=4,
    )
    training_loop(full)
    training_loop(acc)
    assert (
        "16 x 1 rounds" in (full / "log.txt").read_text()
        and "4 x 4 rounds" in (acc / "log.txt").read_text()
    )
    a, b = final_state(full), final_state(acc)
    assert_same_state(a, b, exact=False)
    init = make_run(
        tmp_path / "init", shards, model=TINY_CM, loss={"kind": "test-mse"}, total_steps=1
    )
    training_loop(init)
    # the comparison is not vacuous: four steps moved the weights well beyond the tolerance
    moved = max((a["net"][k] - final_state(init)["net"][k]).abs().max().item() for k in a["net"])
    assert moved > 1e-4


def test_nonfinite_loss_stops_with_last_good_state(tmp_path, shards, extra_losses):
    run = make_run(
        tmp_path / "run", shards, model=TINY_CM, loss={"kind": "test-nan"}, checkpoint_every=1
    )
    with pytest.raises(
        UserError, match=r"step 3: non-finite grad_norm/loss.*training-state-0000003\.pt"
    ):
        training_loop(run)
    assert [s for s, _ in find_states(run)] == [2, 3]
    assert all(torch.isfinite(v).all() for v in final_state(run)["net"].values())
    assert not (run / "network-final.pt").exists()


def test_ema_is_the_exponential_average():
    from bcmcore.train.ema import EMA

    net = torch.nn.Linear(3, 2)
    w0 = net.weight.detach().clone()
    ema = EMA(net, 0.75)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    # theta_ema = 0.75 (0.75 w0 + 0.25 (w0 + 1)) + 0.25 (w0 + 2) = w0 + 0.6875
    torch.testing.assert_close(ema.model.weight, w0 + 0.6875)
    assert not ema.model.weight.requires_grad


def test_lr_schedule_and_batch_split():
    assert TrainConfig(lr=1e-4).lr_at(10**6) == 1e-4
    warm = TrainConfig(lr=1e-4, warmup_steps=10)
    assert warm.lr_at(0) == pytest.approx(1e-5) and warm.lr_at(9) == pytest.approx(1e-4)
    assert TrainConfig(batch=64, batch_gpu=8).split_batch(2) == (8, 4)
    assert TrainConfig(batch=64).split_batch(4) == (16, 1)
    with pytest.raises(
        ConfigError, match=r"train\.batch: 63 is not divisible by the number of processes \(2\)"
    ):
        TrainConfig(batch=63).split_batch(2)
    with pytest.raises(
        ConfigError, match=r"train\.batch_gpu: batch 64 must be divisible by batch_gpu x processes"
    ):
        TrainConfig(batch=64, batch_gpu=12).split_batch(2)


# ------------------------------------------------------------------------------------------
# fine-tuning


def test_bcm_finetune_starts_from_the_cm_network(tmp_path, shards):
    from bcmcore.config import from_dict
    from bcmcore.nets import build_model, load_network
    from bcmcore.nets.config import ModelConfig
    from bcmcore.train.loop import init_from_network

    cm_run = make_run(tmp_path / "ict", shards, model=TINY_CM, loss={"kind": "ict"}, total_steps=2)
    training_loop(cm_run)
    cm, _ = load_network(cm_run / "network-final.pt")
    bcm = build_model(from_dict(ModelConfig, TINY_BCM, "model"))
    init_from_network(bcm, cm_run / "network-final.pt")
    x_in, c_t, c_u = torch.randn(32, 2), torch.randn(32), torch.randn(32)
    with (
        torch.no_grad()
    ):  # [I|0] init (BCM §3.2): the raw BCM net ignores u and equals the trained CM net
        torch.testing.assert_close(bcm.net(x_in, c_t, c_u), cm.net(x_in, c_t), rtol=0, atol=0)
        assert not torch.equal(bcm.net(x_in, c_t, c_u), build_model(bcm.cfg).net(x_in, c_t, c_u))
    ft = make_run(tmp_path / "bcm_ft", shards, total_steps=1, init=str(cm_run / "network-final.pt"))
    training_loop(ft)
    assert (ft / "network-final.pt").is_file()


# ---------------------------------------------------------------------------------------- bad input


def test_unknown_loss_kind(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, loss={"kind": "nope"})
    with pytest.raises(ConfigError, match=r"loss\.kind: unknown loss 'nope'"):
        training_loop(run)


def test_batch_not_divisible_by_batch_gpu(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, batch=16, batch_gpu=6)
    with pytest.raises(ConfigError, match=r"train\.batch_gpu"):
        training_loop(run)


def test_missing_init_network(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, init=str(tmp_path / "ict" / "network-final.pt"))
    with pytest.raises(ConfigError, match=r"train\.init: .*network-final\.pt not found"):
        training_loop(run)


def test_truncated_training_state(tmp_path, shards):
    run = make_run(tmp_path / "run", shards, total_steps=2)
    training_loop(run)
    path = find_states(run)[-1][1]
    path.write_bytes(path.read_bytes()[:1000])
    (run / "network-final.pt").unlink()
    with pytest.raises(
        UserError, match=rf"{path.name}: cannot read training state .*truncated or corrupt"
    ):
        training_loop(run)
    # through the CLI: one line, exit code 2
    r = subprocess.run(
        [sys.executable, "-m", "bcmcore", "train", "--run-dir", str(run)],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 2 and path.name in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_changed_config_starts_over_and_keeps_the_old_run(tmp_path, shards):
    """The workflow reruns a stage when its settings change: the old states must not be resumed
    (that would return the old network), and must not be lost either."""
    run = make_run(tmp_path / "run", shards, total_steps=2)
    training_loop(run)
    old_final = (run / "network-final.pt").read_bytes()
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["lr"] = cfg["train"].get("lr", 1e-4) * 3
    (run / "config.json").write_text(json.dumps(cfg))
    training_loop(run)
    assert (run / "superseded-1" / "network-final.pt").read_bytes() == old_final
    assert sorted(p.name for p in (run / "superseded-1").glob("training-state-*.pt"))
    assert (run / "network-final.pt").read_bytes() != old_final  # retrained with the new lr
    assert "starting over" in (run / "log.txt").read_text()
    cfg["model"]["net"]["channels"] = 8  # a model change too
    (run / "config.json").write_text(json.dumps(cfg))
    training_loop(run)
    assert (run / "superseded-2" / "network-final.pt").is_file()
