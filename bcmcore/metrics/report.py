"""Tables (CSV) and plots (matplotlib, Agg) of an evaluation sweep, and a training run's loss /
snapshot-FID curves; every file written atomically (sample grids: bcmcore.images.save_grid).

Numbers come only from the rows the sweep measured.
"""

import csv
import io
import json
from pathlib import Path

from bcmcore.util import atomic_path, atomic_write_text

COLUMNS = {
    "fid": [
        "model",
        "kind",
        "sampler",
        "nfe",
        "time_steps",
        "fid",
        "precision",
        "recall",
        "is",
        "is_std",
        "kid",
        "kid_std",
        "features",
        "samples",
        "checkpoint",
        "step",
        "seeds",
        "seconds",
    ],
    "mse": [
        "model",
        "kind",
        "task",
        "inversion_nfe",
        "nfe",
        "time_steps",
        "mse",
        "psnr",
        "ssim",
        "lpips",
        "lpips_net",
        "images",
        "checkpoint",
        "step",
        "seeds",
    ],
    "guidance": [
        "model",
        "kind",
        "w",
        "nfe",
        "fid",
        "precision",
        "recall",
        "vgg_precision",
        "vgg_recall",
        "vgg_features",
        "features",
        "edit_rate",
        "edit_lpips",
        "lpips_net",
        "edits",
        "edit_nfe",
        "samples",
        "checkpoint",
        "step",
        "seeds",
        "seconds",
    ],
}

# The numeric columns of COLUMNS, by type: what `typed` turns back into numbers when a table is read
# (the workflow's merge sorts and plots them).
INTS = ("nfe", "inversion_nfe", "samples", "images", "step", "edits", "edit_nfe")
FLOATS = ("fid", "precision", "recall", "w", "mse", "seconds", "edit_rate", "is", "is_std", "kid")
FLOATS += ("kid_std", "psnr", "ssim", "lpips", "vgg_precision", "vgg_recall", "edit_lpips")


def typed(row):
    """CSV strings -> the numbers the plots sort and draw (empty cells stay empty)."""
    out = dict(row)
    for key in INTS + FLOATS:
        if out.get(key) not in (None, ""):
            out[key] = int(float(out[key])) if key in INTS else float(out[key])
    return out


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def write_csv(path, rows, columns):
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _savefig(fig, path):
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fid_vs_nfe(path, rows):
    """FID against NFE, one line per model (points labelled with their sampler)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], "o-", label=model)
        for r in rs:
            ax.annotate(
                r["sampler"],
                (r["nfe"], r["fid"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set(xlabel="NFE", ylabel="FID", title="FID vs NFE")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _savefig(fig, path)


def plot_mse_vs_nfe(path, rows):
    """Reconstruction MSE against inversion NFE, one line per (model, task)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key in dict.fromkeys((r["model"], r["task"]) for r in rows):
        rs = sorted(
            (r for r in rows if (r["model"], r["task"]) == key), key=lambda r: r["inversion_nfe"]
        )
        ax.plot([r["inversion_nfe"] for r in rs], [r["mse"] for r in rs], "o-", label=" ".join(key))
    ax.set(
        xlabel="inversion NFE",
        ylabel="MSE per dimension ([0,1] images)",
        title="Reconstruction MSE",
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _savefig(fig, path)


def plot_guidance(path, rows):
    """FID, precision, recall (and the class-edit success rate, where measured) against w, a line
    per model."""
    plt = _plt()
    edits = any(r.get("edit_rate") not in (None, "") for r in rows)
    keys = ("fid", "precision", "recall") + (("edit_rate",) if edits else ())
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.8))
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["w"])
        label = f"{model} ({rs[0]['kind']}, NFE {rs[0]['nfe']})"
        for ax, key in zip(axes, keys):
            pts = [(r["w"], r[key]) for r in rs if r.get(key) not in (None, "")]
            if pts:
                ax.plot(*zip(*pts), "o-", label=label)
    for ax, key in zip(axes, ("FID", "precision", "recall", "edit success rate")):
        ax.set(xlabel="guidance weight w", ylabel=key, title=f"{key} vs w")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _savefig(fig, path)


def write_images(out, row, info):
    """`bcm eval --images`: fid_table.csv with its one row (the sweep's columns: the workflow's
    merge and the plots read it alike) and eval_info.json (the reference, features, notes)."""
    out = Path(out)
    atomic_write_text(out / "eval_info.json", json.dumps(info, indent=2) + "\n")
    write_csv(out / "fid_table.csv", [row], COLUMNS["fid"])


# logged by the objectives beside their loss terms, but schedules, not losses: the iCT / BCT
# discretisation curriculum N(k) (iCT Eq. 7), iGCT's training stage and share of guided pairs
SCHEDULE_TERMS = ("num_points", "stage", "guided_frac")


def plot_training(path, rows, title):
    """A run's curves from its stats.jsonl rows: every loss term against the training step (each
    point the mean over one status interval, train.status_every), the schedule terms the objective
    logs (SCHEDULE_TERMS) on a right-hand axis, so a loss jump lines up with the curriculum step
    that caused it, and, when the run measured it (train.snapshot_fid), the quick FID of the EMA
    snapshots below, on the same step axis."""
    from bcmcore.config import UserError
    from bcmcore.train.monitor import loss_terms

    status = [r for r in rows if "snapshot_fid" not in r]
    snaps = sorted((r for r in rows if "snapshot_fid" in r), key=lambda r: r["step"])
    terms = list(dict.fromkeys(k for r in status for k in loss_terms(r)))
    losses = [k for k in terms if k not in SCHEDULE_TERMS]
    if not losses:
        raise UserError(f"{path}: no loss rows to plot (the run wrote no status row yet)")

    def series(term):
        return list(zip(*sorted((r["step"], r[term]) for r in status if term in r)))

    plt = _plt()
    n = 1 + bool(snaps)
    fig, axes = plt.subplots(n, 1, figsize=(5.5, 3.2 * n), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    ax = axes[0]
    for term in losses:
        steps, values = series(term)
        ax.plot(steps, values, "o-" if len(steps) <= 40 else "-", ms=3, label=term)
    if min(v for term in losses for v in series(term)[1]) > 0:
        ax.set_yscale("log")  # losses fall by orders of magnitude; terms differ in scale
    ax.set(ylabel="loss (mean per status interval)", title=f"{title}: training curves")
    handles = ax.get_legend_handles_labels()
    schedule = [k for k in terms if k in SCHEDULE_TERMS]
    if schedule:
        right = ax.twinx()
        for term, style in zip(schedule, (":", "--", "-.")):
            right.step(*series(term), style, where="post", color="0.4", label=term)
        right.set_ylabel("schedule: " + ", ".join(schedule))
        handles = [a + b for a, b in zip(handles, right.get_legend_handles_labels())]
    ax.legend(*handles, fontsize=8)
    if snaps:
        last = snaps[-1]
        label = f"{last.get('fid_samples', '?')} EMA samples, {last.get('fid_features', '?')}"
        steps = [r["step"] for r in snaps]
        axes[1].plot(steps, [r["snapshot_fid"] for r in snaps], "o-", label=label)
        axes[1].set(ylabel="snapshot FID")
        axes[1].legend(fontsize=8)
    axes[-1].set(xlabel="training step")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    for ax in axes:
        ax.grid(alpha=0.3)
    _savefig(fig, path)


def write_all(out, rows, info):
    """fid_table.csv, mse_table.csv, guidance_table.csv, plots/*.png and eval_info.json under
    `out`."""
    out = Path(out)
    for name, cols in COLUMNS.items():
        write_csv(out / f"{name}_table.csv", rows[name], cols)
    if rows["fid"]:
        plot_fid_vs_nfe(out / "plots" / "fid_vs_nfe.png", rows["fid"])
    if rows["mse"]:
        plot_mse_vs_nfe(out / "plots" / "mse_vs_nfe.png", rows["mse"])
    if rows["guidance"]:
        plot_guidance(out / "plots" / "guidance.png", rows["guidance"])
    atomic_write_text(out / "eval_info.json", json.dumps(info, indent=2) + "\n")
