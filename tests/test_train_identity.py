"""Identity keys vs runtime keys (bcmcore/train/identity.py): which config changes start a run over.

A tiny run is trained to its end; the reruns below go back to its state at step 4 (later states
and the final network removed, as if the job had been cut off there), change one key, train on.
"""

import json

import pytest
from helpers import TINY_CM, assert_same_state, final_state, make_run

from bcmcore.config import ConfigError
from bcmcore.train import training_loop
from bcmcore.train.checkpoint import find_states, load_state
from bcmcore.train.identity import RUNTIME, compare, identity_part, runtime_part, with_runtime
from bcmcore.util import atomic_torch_save

STEPS, CUT = 8, 4
BASE = {"total_steps": STEPS, "checkpoint_every": 2, "keep_last": 10, "status_every": 1}
DATA = {"in_memory": False, "num_workers": 0}  # read the shards, so the loader keys do something


def tiny(run_dir, shards, data=None, **train):  # noqa: F811
    run = make_run(run_dir, shards, model=TINY_CM, loss={"kind": "ict"}, **{**BASE, **train})
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"].update({**DATA, **(data or {})})
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def cut_back(run, step=CUT):
    """The run as if its job had been cut off right after the state of `step`."""
    (run / "network-final.pt").unlink()
    for s, path in find_states(run):
        if s > step:
            path.unlink()


def edit(run, section, **changes):
    cfg = json.loads((run / "config.json").read_text())
    cfg[section].update(changes)
    (run / "config.json").write_text(json.dumps(cfg))


def log_since(run, mark):
    return (run / "log.txt").read_text()[mark:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards):  # noqa: F811
    run = tiny(tmp_path_factory.mktemp("ref") / "run", shards)
    training_loop(run, device="cpu")
    return final_state(run)


# Keys that cannot touch the numbers: resumed, nothing superseded, final weights bitwise equal.
BITWISE = [
    ("train", {"status_every": 3}),
    ("train", {"checkpoint_every": 3}),
    ("train", {"snapshot_every": 2}),
    ("train", {"keep_last": 1}),
    ("data", {"num_workers": 2}),
    ("data", {"prefetch": 1, "num_workers": 1}),
    ("data", {"verify_sha256": True}),
    ("data", {"in_memory": True}),
    ("data", {"pin_memory": False}),
    ("train", {"tf32": False}),
    ("train", {"cudnn_benchmark": False}),
    ("train", {"deterministic": True}),
    ("train", {"channels_last": True}),  # MLP: ignored (convolutional nets only)
    ("train", {"bf16": True}),  # autocast runs on CUDA only: a no-op on this CPU
]


@pytest.mark.parametrize("section, change", BITWISE, ids=lambda v: str(v))
def test_runtime_key_resumes_bitwise(tmp_path, shards, reference, section, change):  # noqa: F811
    run = tiny(tmp_path / "run", shards)
    training_loop(run, device="cpu")
    cut_back(run)
    edit(run, section, **change)
    mark = len((run / "log.txt").read_text())
    training_loop(run, device="cpu")
    log = log_since(run, mark)
    assert f"resumed from training-state-{CUT:07d}.pt" in log, log
    assert "starting over" not in log and not list(run.glob("superseded-*")), log
    changed = log.split("changed since that state (no restart): ")[1].split("\n")[0]
    assert all(f"{section}.{key}" in changed for key in change), log
    assert_same_state(reference, final_state(run))


def test_batch_gpu_resumes_but_is_not_bitwise(tmp_path, shards, reference):  # noqa: F811
    """batch_gpu keeps the global batch and the data of every step, but each accumulation chunk
    draws its own noise (seeded per step and chunk), so 2 chunks of 8 see other noise than 1 chunk
    of 16: the run resumes, the numbers differ from an unchanged run (the same identity keys)."""
    run = tiny(tmp_path / "run", shards)
    training_loop(run, device="cpu")
    cut_back(run)
    edit(run, "train", batch_gpu=8)
    mark = len((run / "log.txt").read_text())
    training_loop(run, device="cpu")
    log = log_since(run, mark)
    assert "resumed from training-state-0000004.pt" in log and "starting over" not in log, log
    assert "16 x 1 rounds" not in log and "8 x 2 rounds" in log, log
    ours, ref = final_state(run), reference
    assert ours["step"] == ref["step"] == STEPS
    diff = max(
        (a - b).abs().max().item() for a, b in zip(ours["net"].values(), ref["net"].values())
    )
    assert 0 < diff < 0.1, diff  # not bitwise (the README says so), but the same kind of run


def test_raising_total_steps_continues_and_keeps_the_schedule(tmp_path, shards):  # noqa: F811
    """Raising total_steps continues from the newest state. The curriculum keeps the length the run
    started with (schedule_steps = 8), so the first 8 steps are exactly those of the 8-step run."""
    short = tiny(tmp_path / "short", shards)
    training_loop(short, device="cpu")
    edit(short, "train", total_steps=12)
    mark = len((short / "log.txt").read_text())
    training_loop(short, device="cpu")
    log = log_since(short, mark)
    assert "resumed from training-state-0000008.pt (step 8)" in log, log
    assert "train.total_steps 8 -> 12" in log and "steps 8->12" in log, log
    assert final_state(short)["step"] == 12 and not list(short.glob("superseded-*"))
    assert final_state(short)["config"]["train"]["schedule_steps"] == 8
    # the same 12 steps in one go with schedule_steps 8: bitwise the same run
    once = tiny(tmp_path / "once", shards, total_steps=12, schedule_steps=8)
    training_loop(once, device="cpu")
    assert_same_state(final_state(once), final_state(short))


def test_lowering_total_steps_below_the_state_is_an_error(tmp_path, shards):  # noqa: F811
    run = tiny(tmp_path / "run", shards)
    training_loop(run, device="cpu")
    cut_back(run, 6)
    edit(run, "train", total_steps=5)
    with pytest.raises(ConfigError, match=r"train.total_steps 5 is below the step .* \(6\)"):
        training_loop(run, device="cpu")
    assert [s for s, _ in find_states(run)] == [2, 4, 6]  # nothing moved or deleted
    edit(run, "train", total_steps=7)  # still ahead of the state: resumes and stops at 7
    training_loop(run, device="cpu")
    assert final_state(run)["step"] == 7 and not list(run.glob("superseded-*"))


def test_changing_lr_still_starts_over(tmp_path, shards):  # noqa: F811
    run = tiny(tmp_path / "run", shards)
    training_loop(run, device="cpu")
    cut_back(run)
    edit(run, "train", lr=3e-3, batch_gpu=8)  # an identity key (with a runtime key alongside)
    training_loop(run, device="cpu")
    log = (run / "log.txt").read_text()
    assert "train.lr 0.001 -> 0.003" in log and "starting over" in log, log
    assert "batch_gpu" not in log.split("other identity keys")[1].split("\n")[0]
    assert (run / "superseded-1" / "training-state-0000004.pt").is_file()
    assert final_state(run)["step"] == STEPS


def test_a_re_prepared_dataset_starts_over(tmp_path):
    """The shards' content digest is part of the recipe: other data (another prep seed) is a new
    run, like a changed lr (it used to resume: 'steps N->N' on the old network)."""
    from bcmcore.cli.prep import prep

    shards = tmp_path / "shards"
    flags = ["--out", str(shards), "--n-train", "64", "--n-test", "16", "--shard-size", "32"]
    prep(["gmm2d", *flags])
    run = tiny(tmp_path / "run", shards, total_steps=4)
    training_loop(run, device="cpu")
    first = final_state(run)["config"]["data"]["digest"]
    prep(["gmm2d", *flags, "--seed", "1"])
    mark = len((run / "log.txt").read_text())
    training_loop(run, device="cpu")
    log = log_since(run, mark)
    assert f"data.digest '{first}' -> " in log and "starting over" in log, log
    assert (run / "superseded-1" / "network-final.pt").is_file()
    state = final_state(run)
    assert state["config"]["data"]["digest"] != first and state["step"] == 4
    # the same data again (a prep flag that changes nothing): resumed, nothing to do
    prep(["gmm2d", *flags, "--seed", "1", "--workers", "1"])
    mark = len((run / "log.txt").read_text())
    training_loop(run, device="cpu")
    assert "nothing to do" in log_since(run, mark) and not (run / "superseded-2").exists()
    # a config that pins other data is refused, naming both
    edit(run, "data", digest="0123456789abcdef")
    with pytest.raises(ConfigError, match=r"config\.json: data\.digest 0123456789abcdef but .*"):
        training_loop(run, device="cpu")


def test_a_key_added_later_with_its_default_does_not_restart(tmp_path, shards, reference):  # noqa: F811
    """Simulated code update: the states were written by code that did not know some keys yet (their
    stored config lacks them); the new code fills their defaults and resumes."""
    run = tiny(tmp_path / "run", shards)
    training_loop(run, device="cpu")
    cut_back(run)
    _, path = find_states(run)[-1]
    state = load_state(path)
    for section, key in (
        ("train", "grad_clip"),
        ("train", "schedule_steps"),
        ("data", "xflip"),
        ("data", "digest"),  # a state from before data identity resumes (its data is unknown)
    ):
        del state["config"][section][key]
    state["config"]["loss"] = {"kind": "ict"}  # a loss section from before its defaults were stored
    del state["config"]["model"]["net"]["dropout"]
    atomic_torch_save(state, path)
    mark = len((run / "log.txt").read_text())
    training_loop(run, device="cpu")
    log = log_since(run, mark)
    assert "resumed from training-state-0000004.pt" in log and "starting over" not in log, log
    assert_same_state(reference, final_state(run))


def test_split_of_a_run_config():
    cfg = {
        "model": {"kind": "cm"},
        "loss": {"kind": "ict"},
        "data": {"split": "train", "num_workers": 8},
        "train": {"lr": 1e-4, "batch_gpu": 64, "total_steps": 10, "compile": True},
    }
    assert runtime_part(cfg) == {
        "data": {"num_workers": 8},
        "train": {"batch_gpu": 64, "compile": True},
    }
    assert identity_part(cfg) == {
        "model": {"kind": "cm"},
        "loss": {"kind": "ict"},
        "data": {"split": "train"},
        "train": {"lr": 1e-4, "total_steps": 10},
    }
    assert with_runtime(identity_part(cfg), runtime_part(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"runtime.json: 'train.lr' is not a runtime key"):
        with_runtime(cfg, {"train": {"lr": 1.0}})
    # every runtime key is a real config key (a rename must not silently make it an identity key)
    from bcmcore.data import DataConfig
    from bcmcore.train import TrainConfig

    fields = {"train": TrainConfig.__dataclass_fields__, "data": DataConfig.__dataclass_fields__}
    for section, keys in RUNTIME.items():
        assert set(keys) <= set(fields[section]), (section, set(keys) - set(fields[section]))


def test_runtime_json_is_laid_over_config_json(tmp_path, shards):  # noqa: F811
    """The workflow writes the identity keys to config.json and the runtime keys to runtime.json."""
    run = tiny(tmp_path / "run", shards, total_steps=2)
    (run / "runtime.json").write_text(json.dumps({"train": {"batch_gpu": 4}}))
    training_loop(run, device="cpu")
    assert "batch 16 = 4 x 4 rounds x 1" in (run / "log.txt").read_text()
    (run / "runtime.json").write_text(json.dumps({"train": {"seed": 3}}))
    with pytest.raises(ConfigError, match=r"runtime.json: 'train.seed' is not a runtime key"):
        training_loop(run, device="cpu")


def test_compare_names_what_changed():
    from bcmcore.train.config import parse_run_config

    base = {"model": TINY_CM, "loss": {"kind": "ict"}, "data": {}, "train": {"total_steps": 8}}
    old = parse_run_config(base).as_dict()
    d = compare(old, parse_run_config({**base, "train": {"total_steps": 8, "ema_rate": 0.5}}), 4)
    assert d.restart and d.changed == ("train.ema_rate 0.99993 -> 0.5",)
    d = compare(old, parse_run_config({**base, "train": {"total_steps": 9, "keep_last": 5}}), 4)
    assert not d.restart and d.cfg.train.schedule_steps == 8
    assert d.changed == ("train.keep_last 2 -> 5", "train.total_steps 8 -> 9")
