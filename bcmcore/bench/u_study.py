"""Which training makes the demo's BCM use u, and what it buys (docs/u_use.md).

    bcm bench u-use RUN_DIR [RUN_DIR ...] --shards results/digits/shards --out DIR

For every training state of each run (`training-state-<step>.pt`: keep them with a large
`train.keep_last`), EMA and online weights, one row of DIR/u_use_steps.csv: rel_L at the summary
pairs and its max over the probe's (t, u) grid (bcmcore/metrics/probe.py), on the test digits. For
each run's last state, the demo's sweep (`bcm eval`'s code) in DIR/<run>/: FID at NFE 1-4 with the
demo's untuned and tuned recipes, and the inversion MSE by NFE. A run is any `bcm train` run
directory; its config.json is the setting.
"""

import csv
import json
from pathlib import Path

from bcmcore.config import UserError, from_dict
from bcmcore.metrics.probe import inversion_probe, u_use_summary
from bcmcore.nets import ModelConfig, build_model, save_network
from bcmcore.train.checkpoint import find_states, load_state

# the demo's NFE 1-4 samplers, untuned and as tuned for the 300-step bcm_ft (bcmcore/recipes.py)
SAMPLERS = (
    "demo-nfe1",
    "demo-nfe2",
    "demo-nfe3",
    "demo-nfe4",
    "digits-bcm_ft-nfe2",
    "digits-bcm_ft-nfe3",
    "digits-bcm_ft-nfe4",
)
INVERSIONS = ([0.07, 80.0], [0.07, 2.0, 80.0], [0.07, 0.5, 2.0, 80.0])


def state_models(path):
    """(EMA model, online model, step, run config) of a training state."""
    state = load_state(path)
    cfg = from_dict(ModelConfig, state["config"]["model"], "model")
    models = []
    for key in ("ema", "net"):
        m = build_model(cfg)
        m.load_state_dict(state[key])
        models.append(m.eval().requires_grad_(False))
    return models[0], models[1], state["step"], state["config"]


def wall_seconds(run_dir, step):
    """Training wall time to `step` from stats.jsonl (None where the row is missing)."""
    stats = Path(run_dir) / "stats.jsonl"
    if not stats.is_file():
        return None
    for line in stats.read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == step:
            return row.get("time_s")
    return None


def u_use_rows(run_dir, x, y):
    rows, last = [], None
    for step, path in find_states(run_dir):
        ema, online, step, config = state_models(path)
        for weights, model in (("ema", ema), ("online", online)):
            summary = u_use_summary(inversion_probe(model, x, y))
            rows.append(
                {
                    "run": Path(run_dir).name,
                    "step": step,
                    "weights": weights,
                    **{k: round(v, 4) for k, v in summary.items()},
                    "wall_s": wall_seconds(run_dir, step),
                }
            )
            print(f"[u_study] {rows[-1]}", flush=True)
        last = (ema, step, config)
    if last is None:
        raise UserError(f"{run_dir}: no training-state-*.pt (a `bcm train` run directory?)")
    return rows, last


def sweep(run_dir, shards, out, ema, step, config):
    """The demo's sweep of the run's last EMA weights (FID at NFE 1-4, inversion MSE)."""
    from bcmcore.metrics.spec import load_spec
    from bcmcore.metrics.sweep import run

    out.mkdir(parents=True, exist_ok=True)
    network = out / "network.pt"
    save_network(network, ema, step, config)
    spec = {
        "dataset": str(shards),
        "features": {"kind": "demo"},
        "ref_split": "train",
        "num_samples": 500,
        "batch_size": 250,
        "inversion_split": "test",
        "inversion_count": 200,
        "models": [
            {
                "name": Path(run_dir).name,
                "kind": "bcm",
                "network": str(network),
                "samplers": [{"recipe": r} for r in SAMPLERS],
                "inversions": [{"times": t} for t in INVERSIONS],
            }
        ],
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    run(load_spec(out / "spec.json"), out, device="cpu", progress=False)


def study(runs, shards, out, sweeps=True):
    """rel_L rows of every state of each run into out/u_use_steps.csv; the sweep of each run's
    last state into out/<run>/ unless sweeps is False."""
    from bcmcore.data import load_split

    x, y = load_split(shards, "test", limit=200)
    x = x.float() / 127.5 - 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "u_use_steps.csv"
    for run_dir in runs:
        rows, (ema, step, config) = u_use_rows(run_dir, x, y)
        new = not table.exists()
        with open(table, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
        if sweeps:
            sweep(run_dir, shards, out / Path(run_dir).name, ema, step, config)
    return 0
