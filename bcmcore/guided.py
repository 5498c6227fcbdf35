"""Inversion and class editing with guidance: iGCT (noiser + guided denoiser, 2 NFE) and the CFG-EDM
baseline (docs/methods.md §10). iGCT's guided generation is the `igct` sampler in bcmcore.sampling.

Every routine checks its inputs before the first network call and returns (result, nfe). w is in the
paper convention (w = 1: no guidance). Noise comes from per-sample seeds, so sample i depends on
seed i only.
"""

import torch

from bcmcore import editing, sampling
from bcmcore.nets.facts import check_kind, class_labels, num_classes
from bcmcore.nets.igct import check_labels, check_w


@torch.no_grad()
def igct_edit(model, x, y_src, y_tar, w=1.0, clamp=True):
    """Class editing x_edit = clip(D(N(x, sigma_min, c_src), T, c_tar, w)): 2 NFE (docs/methods.md
    §9-10). y_tar = y_src: recon."""
    check_kind(model, ("igct",), "igct_edit")
    check_w(w)
    y_src = class_labels(model, y_src, x.shape[0], x.device, "source class")
    y_tar = class_labels(model, y_tar, x.shape[0], x.device, "target class")
    z_lat, _ = editing.igct_invert(model, x, y_src)
    x_edit = model.denoiser(z_lat, model.sigma_max, y_tar, w)
    return (x_edit.clamp(-1, 1) if clamp else x_edit), 2


@torch.no_grad()
def edm_invert(model, x, y, steps=18):
    """EDM ODE inversion: Heun from sigma_min up to T with the source class, no CFG (docs/methods.md
    §10)."""
    check_kind(model, ("edm",), "edm_invert")
    y = class_labels(model, y, x.shape[0], x.device, "source class")
    return editing.heun_invert(
        model, x, sampling.karras_times(steps, model.sigma_min, model.sigma_max)[::-1], y
    )  # increasing sigma_min .. T


@torch.no_grad()
def edm_edit(model, x, y_src, y_tar, w=1.0, steps=18, clamp=True):
    """EDM class editing: invert with c_src (ODE), then Heun-CFG sample from that latent with c_tar
    and w."""
    check_kind(model, ("edm",), "edm_edit")
    check_w(w)
    y_tar = class_labels(model, y_tar, x.shape[0], x.device, "target class")
    z_lat, nfe_inv = edm_invert(model, x, y_src, steps)
    x_edit, nfe_gen = sampling.heun(
        model,
        z_lat,
        sampling.karras_times(steps, model.sigma_min, model.sigma_max, zero=True),
        y_tar,
        float(w),
    )
    return (x_edit.clamp(-1, 1) if clamp else x_edit), nfe_inv + nfe_gen


def edit(model, x, y_src, y_tar, w=1.0, steps=18, clamp=True):
    """Class editing for either family: iGCT (noiser + guided denoiser) or EDM (ODE inversion +
    CFG)."""
    check_kind(model, ("igct", "edm"), "class editing")
    if model.kind == "igct":
        return igct_edit(model, x, y_src, y_tar, w, clamp)
    return edm_edit(model, x, y_src, y_tar, w, steps, clamp)


# ----------------------------------------------------------------------------------------------
# Class-editing success rate (demo digits): how often the edited image is classified as the target
# class


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
