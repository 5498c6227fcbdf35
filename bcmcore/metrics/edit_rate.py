"""Class-editing success rate: how often an edit (bcmcore.editing.edit) is classified as its
target class; per batch for the eval sweep (guidance_table.csv, per w), and of a network file on the
demo digits as a CSV table (`bcm edit-rate`)."""

import torch

from bcmcore.editing import edit
from bcmcore.images import to_float
from bcmcore.nets.facts import check_kind, num_classes
from bcmcore.nets.igct import check_labels, check_w


@torch.no_grad()
def edit_hits(model, classify, x, y_src, w, steps=18, distance=None):
    """([B] count of targets (all c != c_src) whose edit of x_i `classify` labels as that target,
    NFE per edit, [B] sum over those targets of `distance(x, x_edit) -> [B]` (e.g. LPIPS; None
    without `distance`))."""
    num = num_classes(model)
    y_src = check_labels(y_src, num, "source class").to(x.device)
    hits = torch.zeros(x.shape[0], dtype=torch.long)
    dists = None if distance is None else torch.zeros(x.shape[0], dtype=torch.float64)
    for k in range(1, num):  # every off-diagonal (source, target) pair
        y_tar = (y_src + k) % num
        x_edit, nfe = edit(model, x, y_src, y_tar, w, steps)
        hits += (classify(x_edit).to(y_tar.device) == y_tar).long().cpu()
        if distance is not None:
            dists += torch.as_tensor(distance(x, x_edit), dtype=torch.float64).cpu()
    return hits, nfe, dists


def edit_success_rate(model, classify, x, y_src, ws, steps=18, batch=256):
    """{w: fraction of (image, target) pairs whose edit `classify` labels as the target}, over all
    targets != source."""
    num = num_classes(model)
    y_src = check_labels(y_src, num, "source class").to(x.device)
    return {
        float(w): sum(
            int(
                edit_hits(model, classify, x[i : i + batch], y_src[i : i + batch], w, steps)[
                    0
                ].sum()
            )
            for i in range(0, x.shape[0], batch)
        )
        / (x.shape[0] * (num - 1))
        for w in ws
    }


def edit_rate_table(network, shards, out, ws, split="test", limit=200, steps=18, device=None):
    """Edit the first `limit` images of `split` into every other class per w; the demo classifier
    judges the edits. Writes `out` (w, edit_success_rate, pairs) and returns its rows."""
    from bcmcore.data import load_split
    from bcmcore.metrics.demo_classifier import load_demo_classifier
    from bcmcore.metrics.report import write_csv
    from bcmcore.nets import load_network

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    for w in ws:
        check_w(w)
    model, _ = load_network(network, device)
    check_kind(model, ("igct", "edm"), "edit rate")
    x, y = load_split(shards, split, limit=limit)
    x = to_float(x).to(device)
    classifier = load_demo_classifier(shards, device)
    rates = edit_success_rate(model, classifier.classify, x, y, ws, steps)
    n_pairs = x.shape[0] * (num_classes(model) - 1)
    rows = [{"w": w, "edit_success_rate": r, "pairs": n_pairs} for w, r in rates.items()]
    write_csv(out, rows, ["w", "edit_success_rate", "pairs"])
    return rows
