"""Guided generation, inversion and class editing: iGCT (1-2 NFE) and the CFG-EDM baseline
(docs/methods.md §9-10).

Every routine checks its inputs before the first network call and returns (result, nfe). w is in the
paper convention (w = 1: no guidance). Noise comes from per-sample seeds, so sample i depends on
seed i only.
"""

import torch

from bcmcore import editing, sampling
from bcmcore.config import UserError
from bcmcore.nets.igct import check_labels, check_w

T_MID = 0.821  # ECT's CIFAR-10 intermediate level for 2-step sampling (docs/methods.md §9)


def _labels(model, y, n, device, what="class label"):
    num = getattr(model, "num_classes", None) or model.cfg.net.num_classes
    if num < 1:
        raise UserError(
            "class-conditional generation/editing needs a model trained with classes "
            "(this one has model.net.num_classes = 0)"
        )
    y = check_labels(y, num, what).to(device)
    return y.expand(n) if y.ndim == 0 else y


def _require(model, kinds, routine):
    kind = getattr(model, "kind", None)
    if kind not in kinds:
        extra = (
            " (it has no noiser; class editing needs iGCT or EDM)" if kind in ("cm", "bcm") else ""
        )
        raise UserError(
            f"{routine}: needs a model of kind {' or '.join(kinds)}, got kind {kind!r}{extra}"
        )


@torch.no_grad()
def igct_generate(
    model, seeds, y, w=1.0, shape=None, steps=1, t_mid=T_MID, device="cpu", clamp=True
):
    """x = clip(D(T z, T, c, w)); steps=2 adds x <- clip(D(x + t_mid z', t_mid, c, w))
    (docs/methods.md §9). NFE = steps.

    clamp=False for toy data that is not in [-1, 1]; shape defaults to the model's data shape.
    """
    _require(model, ("igct",), "igct_generate")
    check_w(w)
    if steps not in (1, 2):
        raise UserError(f"igct_generate: steps must be 1 or 2, got {steps}")
    if not model.sigma_min < t_mid < model.sigma_max:
        raise UserError(
            f"igct_generate: t_mid must lie in ({model.sigma_min}, {model.sigma_max}), got {t_mid}"
        )
    shape = tuple(shape or _data_shape(model))
    rng = sampling.SeededRNG(seeds, device)
    y = _labels(model, y, len(rng), device)
    clip = (lambda v: v.clamp(-1, 1)) if clamp else (lambda v: v)
    x = clip(model.denoiser(model.sigma_max * rng.randn(shape), model.sigma_max, y, w))
    if steps == 2:
        x = clip(model.denoiser(x + t_mid * rng.randn(shape), t_mid, y, w))
    return x, steps


@torch.no_grad()
def igct_invert(model, x, y):
    """1-step inversion through the noiser: z_lat = N(x, sigma_min, c) (docs/methods.md §9-10;
    latent scale ~ T)."""
    _require(model, ("igct",), "igct_invert")
    return model.noiser(x, model.sigma_min, _labels(model, y, x.shape[0], x.device)), 1


@torch.no_grad()
def igct_edit(model, x, y_src, y_tar, w=1.0, clamp=True):
    """Class editing x_edit = clip(D(N(x, sigma_min, c_src), T, c_tar, w)): 2 NFE (docs/methods.md
    §9-10). y_tar = y_src: recon."""
    _require(model, ("igct",), "igct_edit")
    check_w(w)
    y_src = _labels(model, y_src, x.shape[0], x.device, "source class")
    y_tar = _labels(model, y_tar, x.shape[0], x.device, "target class")
    z_lat, _ = igct_invert(model, x, y_src)
    x_edit = model.denoiser(z_lat, model.sigma_max, y_tar, w)
    return (x_edit.clamp(-1, 1) if clamp else x_edit), 2


@torch.no_grad()
def edm_invert(model, x, y, steps=18):
    """EDM ODE inversion: Heun from sigma_min up to T with the source class, no CFG (docs/methods.md
    §10)."""
    _require(model, ("edm",), "edm_invert")
    y = _labels(model, y, x.shape[0], x.device, "source class")
    return editing.heun_invert(
        model, x, sampling.karras_times(steps)[::-1], y
    )  # increasing sigma_min .. T


@torch.no_grad()
def edm_edit(model, x, y_src, y_tar, w=1.0, steps=18, clamp=True):
    """EDM class editing: invert with c_src (ODE), then Heun-CFG sample from that latent with c_tar
    and w."""
    _require(model, ("edm",), "edm_edit")
    check_w(w)
    y_tar = _labels(model, y_tar, x.shape[0], x.device, "target class")
    z_lat, nfe_inv = edm_invert(model, x, y_src, steps)
    x_edit, nfe_gen = sampling.heun(
        model, z_lat, sampling.karras_times(steps, zero=True), y_tar, float(w)
    )
    return (x_edit.clamp(-1, 1) if clamp else x_edit), nfe_inv + nfe_gen


def edit(model, x, y_src, y_tar, w=1.0, steps=18, clamp=True):
    """Class editing for either family: iGCT (noiser + guided denoiser) or EDM (ODE inversion +
    CFG)."""
    _require(model, ("igct", "edm"), "class editing")
    if model.kind == "igct":
        return igct_edit(model, x, y_src, y_tar, w, clamp)
    return edm_edit(model, x, y_src, y_tar, w, steps, clamp)


def _data_shape(model):
    net = model.cfg.net
    return (
        (net.data_channels,)
        if net.arch == "mlp"
        else (net.data_channels, net.resolution, net.resolution)
    )


# ----------------------------------------------------------------------------------------------
# Class-editing success rate (demo digits): how often the edited image is classified as the target
# class


@torch.no_grad()
def edit_hits(model, classify, x, y_src, w, steps=18):
    """([B] count of targets (all c != c_src) whose edit of x_i `classify` labels as that target,
    NFE per edit)."""
    num = getattr(model, "num_classes", None) or model.cfg.net.num_classes
    y_src = check_labels(y_src, num, "source class").to(x.device)
    hits = torch.zeros(x.shape[0], dtype=torch.long)
    for k in range(1, num):  # every off-diagonal (source, target) pair
        y_tar = (y_src + k) % num
        x_edit, nfe = edit(model, x, y_src, y_tar, w, steps)
        hits += (classify(x_edit).to(y_tar.device) == y_tar).long().cpu()
    return hits, nfe


def edit_success_rate(model, classify, x, y_src, ws, steps=18, batch=256):
    """{w: fraction of (image, target) pairs whose edit `classify` labels as the target}, over all
    targets != source."""
    num = getattr(model, "num_classes", None) or model.cfg.net.num_classes
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


def edit_rate_main(argv=None):
    """`python -m bcmcore.guided --network FILE --shards DIR --out CSV`: editing success rate per w
    (demo digits)."""
    import argparse

    from bcmcore.data import load_split
    from bcmcore.metrics.demo_classifier import load_demo_classifier
    from bcmcore.metrics.report import write_csv
    from bcmcore.nets import load_network

    p = argparse.ArgumentParser(prog="python -m bcmcore.guided", description=edit_rate_main.__doc__)
    p.add_argument(
        "--network", required=True, help="network-final.pt of an iGCT or EDM (CFG) model"
    )
    p.add_argument(
        "--shards", required=True, help="shard dir of the demo digits (its test split is edited)"
    )
    p.add_argument("--out", required=True, help="CSV file to write: w, edit_success_rate, pairs")
    p.add_argument("--split", default="test")
    p.add_argument("--w", default="1,4,7,13", help="comma-separated guidance weights (w = 1: none)")
    p.add_argument("--limit", type=int, default=200, help="number of source images")
    p.add_argument(
        "--steps",
        type=int,
        default=18,
        help="EDM only: Heun grid points for inversion and sampling",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    try:
        ws = [float(v) for v in a.w.split(",")]
    except ValueError:
        raise UserError(f"--w: expected comma-separated numbers, got {a.w!r}") from None
    for w in ws:
        check_w(w)
    model, _ = load_network(a.network, a.device)
    _require(model, ("igct", "edm"), "edit rate")
    x, y = load_split(a.shards, a.split, limit=a.limit)
    x = torch.as_tensor(x).float().div(127.5).sub(1).to(a.device)
    classifier = load_demo_classifier(a.shards, a.device)
    rates = edit_success_rate(model, classifier.classify, x, y, ws, a.steps)
    n_pairs = x.shape[0] * (model.cfg.net.num_classes - 1)
    write_csv(
        a.out,
        [{"w": w, "edit_success_rate": r, "pairs": n_pairs} for w, r in rates.items()],
        ["w", "edit_success_rate", "pairs"],
    )
    for w, r in rates.items():
        print(f"w={w:g}: {r:.3f} of {n_pairs} edits classified as the target class")
    return 0


if __name__ == "__main__":
    import sys

    try:
        sys.exit(edit_rate_main())
    except UserError as e:  # one clear line, like `bcm`
        print(f"python -m bcmcore.guided: error: {e}", file=sys.stderr)
        sys.exit(2)
