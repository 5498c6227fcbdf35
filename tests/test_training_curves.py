"""Training curves (results/<ds>/curves/<exp>.png, bcmcore.metrics.report.plot_training) from the
stats.jsonl rows the training loop writes (train/loop.py RunLog); the workflow rule and the report
are exercised end to end in tests/test_workflow_e2e.py."""

import pytest
from PIL import Image

from bcmcore.config import UserError
from bcmcore.metrics.report import plot_training
from bcmcore.train.loop import RunLog
from bcmcore.train.monitor import loss_terms, read_stats


def status(step, **terms):
    return {"step": step, "kimg": step * 0.032, "lr": 1e-3, **terms, "sec_per_kimg": 2.0,
            "mem_gb": 0.1, "time_s": step * 0.5}  # fmt: skip


def write_run(run, snapshots=True):
    log = RunLog(run, main=True)  # the loop's own writer
    for step in range(10, 101, 10):
        log.stats(
            status(step, loss=1 / step, loss_ct=0.5 / step, num_points=10 * 2 ** (step // 40))
        )
        if snapshots and step % 50 == 0:
            log.stats({"step": step, "snapshot_fid": 900 / step, "fid_features": "demo-x",
                       "fid_samples": 100})  # fmt: skip
    return run / "stats.jsonl"


def test_curves_from_the_loops_stats_rows(tmp_path):
    rows = read_stats(write_run(tmp_path))
    assert len(rows) == 12 and [i for i, r in enumerate(rows) if "snapshot_fid" in r] == [5, 11]
    assert set(loss_terms(rows[0])) == {"loss", "loss_ct", "num_points"}
    assert loss_terms(rows[5]) == {}  # a snapshot row holds no loss (not plotted as one)
    plot_training(tmp_path / "both.png", rows, "digits ict")
    plot_training(tmp_path / "loss.png", [r for r in rows if "snapshot_fid" not in r], "x")
    with Image.open(tmp_path / "both.png") as both, Image.open(tmp_path / "loss.png") as loss:
        # the snapshot-FID panel sits below the loss panel, on the same step axis
        assert both.size[1] > 1.6 * loss.size[1] and abs(both.size[0] - loss.size[0]) < 40
        assert len(both.convert("RGB").getcolors(1 << 20)) > 50  # drawn, not blank
    assert not list(tmp_path.glob(".tmp-*"))


def test_bad_stats_files_give_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="stats.jsonl: not found"):
        read_stats(tmp_path / "stats.jsonl")
    path = write_run(tmp_path, snapshots=False)
    path.write_text(path.read_text() + '{"step": 110, "loss": \n')
    with pytest.raises(UserError, match=r"stats.jsonl:11: not a JSON stats row"):
        read_stats(path)
    path.write_text('{"loss": 1.0}\n')
    with pytest.raises(UserError, match=r"stats.jsonl:1: a stats row needs an integer 'step'"):
        read_stats(path)
    only_fid = [{"step": 5, "snapshot_fid": 3.0}]
    with pytest.raises(UserError, match="no loss rows"):
        plot_training(tmp_path / "x.png", only_fid, "x")
    assert not (tmp_path / "x.png").exists()
