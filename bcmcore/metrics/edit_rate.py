"""Class-editing success rate of a network file on the demo digits, as a CSV table (`bcm edit-rate`;
the eval sweep reports the same number per w in guidance_table.csv)."""

import torch

from bcmcore import guided
from bcmcore.images import to_float
from bcmcore.nets.facts import check_kind, num_classes
from bcmcore.nets.igct import check_w


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
    rates = guided.edit_success_rate(model, classifier.classify, x, y, ws, steps)
    n_pairs = x.shape[0] * (num_classes(model) - 1)
    rows = [{"w": w, "edit_success_rate": r, "pairs": n_pairs} for w, r in rates.items()]
    write_csv(out, rows, ["w", "edit_success_rate", "pairs"])
    return rows
