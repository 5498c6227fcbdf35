"""Run an evaluation sweep: samples per (model, sampler, NFE, w) -> FID / precision / recall / IS /
KID (and VGG16 precision/recall per w); inversion and JPEG restoration -> MSE / PSNR / SSIM / LPIPS;
class edits -> success rate and LPIPS. Every rank takes its share of seeds (seed i -> sample i,
whatever the split); features are all-gathered in seed order, rank 0 scores and writes.
"""

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bcmcore import dist, editing, sampling
from bcmcore.editing import mse_per_item
from bcmcore.images import to_float, to_uint8
from bcmcore.metrics import image_quality, report
from bcmcore.metrics.edit_rate import edit_hits
from bcmcore.metrics.evaluator import Evaluator, agree_nfe, load_model
from bcmcore.metrics.probe import inversion_probe, u_use_summary
from bcmcore.metrics.scoring import gather_rows
from bcmcore.nets.facts import num_classes
from bcmcore.paths import inside
from bcmcore.recipes import Recipe, get_recipe


def _samples_path(spec, out, name):
    return inside(out, "samples", f"{name}.npz") if spec.save_samples else None


def _score_text(s):
    text = f"FID {s['fid']:.3f} P {s['precision']:.3f} R {s['recall']:.3f} KID {s['kid']:.4f}"
    text += f" IS {s['is']:.2f}" if "is" in s else ""
    if "vgg_precision" in s:
        text += f" VGG P {s['vgg_precision']:.3f} R {s['vgg_recall']:.3f}"
    return text


# --------------------------------------------------------------------------------------------------
# the sweep


def _steps_text(sampler, times=(), pairs=(), steps=None):
    text = sampler + (" " + ">".join(f"{t:g}" for t in times) if times else "")
    text += "".join(f" +zz {e:g}:{t:g}" for e, t in pairs)
    return text + (f" ({steps} step)" if steps else "")


def _seed_text(seeds):
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) else ""


def _sampler_fn(ev, model, s, where):
    recipe = s.resolve(where).for_model(model)

    def fn(rng, y, idx):
        return sampling.generate(model, recipe, rng.randn(ev.shape), rng, y)

    return fn, _recipe_text(recipe)


def _recipe_text(r):
    return _steps_text(r.method, r.times, r.pairs, r.steps if r.method == "igct" else None)


def _guided_fn(ev, model, g, w):
    # iGCT: w is a network input, NFE = steps; CFG-EDM: Heun with D_null + w (D_c - D_null)
    recipe = Recipe("igct", steps=g.steps) if model.kind == "igct" else get_recipe(g.recipe)
    recipe = recipe.for_model(model)
    return lambda rng, y, idx: sampling.generate(
        model, recipe, rng.randn(ev.shape), rng, y, w=float(w)
    )


def reconstruct_batch(model, inv, x, y, rng, clamp=True):
    """Invert and decode one batch per an InversionSpec -> (reconstruction, inversion NFE, total
    NFE), through the same routine as `bcm invert`."""
    _, x_hat, n_inv, n = editing.invert_and_reconstruct(
        model, x, rng, y, inv.times, inv.gen_times, inv.steps, inv.initial_noise, clamp
    )
    return x_hat, n_inv, n


@torch.no_grad()
def item_sweep(ev, model, x_all, y_all, fn, desc, width=1):
    """Means over the inversion split of fn(x, y, rng) -> (per-item values [B] or [B, width],
    nfe_inv, nfe), ranks sharing items -> (mean, or means [width], nfe_inv, nfe)."""
    mine = np.arange(ev.rank, len(x_all), ev.world)
    vals, nfes = [], None
    for i in tqdm(
        range(0, len(mine), ev.spec.batch_size),
        desc=desc,
        leave=False,
        disable=not (ev.progress and dist.is_main()),
    ):
        idx = mine[i : i + ev.spec.batch_size]
        x = x_all[idx].to(ev.device)
        x = x.double() if ev.vector else to_float(x)
        y = y_all[idx].to(ev.device) if num_classes(model) else None
        rng = sampling.SeededRNG(ev.spec.seed + idx, ev.device)
        v, n_inv, n = fn(x.float(), y, rng)
        vals.append(np.asarray(v, np.float64).reshape(len(idx), width))
        nfes = (n_inv, n)
    local = np.concatenate(vals) if vals else np.zeros((0, width))
    per_item = gather_rows(local, mine, len(x_all)).astype(np.float64)
    n_inv, n = nfes if nfes is not None else (-1, -1)
    means = per_item.mean(0)
    return (float(means[0]) if width == 1 else means), agree_nfe(n_inv), agree_nfe(n)


def _q(x):
    """Images as saved: uint8-quantised, back in [-1, 1] (what PSNR, SSIM and LPIPS score)."""
    return to_float(to_uint8(x))


def mse_sweep(ev, model, x_all, y_all, fn, desc):
    """Mean per-image MSE, PSNR, SSIM and LPIPS of fn(x, y, rng) -> (x_hat, nfe_inv, nfe, reference)
    over the inversion split -> ({mse, psnr, ssim, lpips, lpips_net}, nfe_inv, nfe); vectors get
    MSE only."""

    def per_item(x, y, rng):
        x_hat, n_inv, n, ref = fn(x, y, rng)
        x_hat, ref = x_hat.cpu(), ref.cpu()
        cols = [mse_per_item(x_hat, ref, ev.vector).numpy()]
        if not ev.vector:
            a, b = (to_uint8(v).numpy() for v in (x_hat, ref))
            cols += [image_quality.psnr(a, b), image_quality.ssim(a, b)]
            no_lpips = np.full(len(a), np.nan)
            cols.append(ev.lpips(_q(x_hat), _q(ref)) if ev.lpips is not None else no_lpips)
        return np.stack(cols, 1), n_inv, n

    width = 1 if ev.vector else 4
    means, n_inv, n = item_sweep(ev, model, x_all, y_all, per_item, desc, width)
    scores = {"mse": float(np.atleast_1d(means)[0])}
    if not ev.vector:
        scores.update(psnr=float(means[1]), ssim=float(means[2]), lpips_net=_lpips_net(ev))
        scores["lpips"] = float(means[3]) if ev.lpips is not None else None
    return scores, n_inv, n


def _lpips_net(ev):
    return ev.lpips.key if ev.lpips is not None else "none (features.lpips_path not set)"


def edit_rate_sweep(ev, model, x_all, y_all, w, steps):
    """Class-editing success rate at w: the share of (image, other class) edits the demo classifier
    calls the target.

    -> (rate, mean LPIPS(source, edit) or None, nfe): iGCT edits take 2 NFE; EDM's ODE inversion
    + CFG regeneration over `steps` Karras points. LPIPS is the mean over all (image, target)
    pairs: iGCT's mean over the off-diagonal (source, target) cells when classes are balanced."""
    from bcmcore.metrics.demo_classifier import load_demo_classifier

    classify = load_demo_classifier(ev.spec.dataset, ev.device).classify
    num = num_classes(model)

    lp = None if ev.lpips is None else (lambda a, b: torch.from_numpy(ev.lpips(_q(a), _q(b))))

    def per_item(x, y, rng):
        hits, nfe, dists = edit_hits(model, classify, x, y, w, steps, distance=lp)
        dists = dists.numpy() if dists is not None else np.full(len(x), np.nan)
        return np.stack([hits.double().numpy(), dists], 1) / (num - 1), nfe, nfe

    desc = f"{model.kind} edit w={w:g}"
    (rate, dist_), nfe, _ = item_sweep(ev, model, x_all, y_all, per_item, desc, 2)
    return float(rate), (float(dist_) if lp is not None else None), nfe


def run(spec, out_dir, device=None, progress=True):
    """The whole sweep; rank 0 writes the tables, plots and grids under out_dir. Returns the
    rows."""
    sweep = _Sweep(spec, Evaluator(spec, device, progress), Path(out_dir))
    for i, m in enumerate(spec.models):
        model, meta = load_model(m, sweep.ev.device, sweep.ev.shape)
        base = {
            "model": m.name,
            "kind": m.kind,
            "checkpoint": str(m.network),
            "step": meta.get("step"),
        }
        sweep.sampler_rows(i, m, model, base)
        if m.inversions or m.jpeg or (m.guidance and m.guidance.edits):
            sweep.load_split()  # kept: any later bcm model's u-use probe runs on it too
        sweep.inversion_rows(m, model, base)
        sweep.u_use_probe(m, model)
        sweep.jpeg_rows(m, model, base)
        sweep.guidance_rows(m, model, base)
        del model
    if dist.is_main():
        report.write_all(sweep.out, sweep.rows, sweep.info())
    dist.barrier()
    return sweep.rows


class _Sweep:
    """The rows of one sweep so far, one method per row kind; the inversion split, loaded for the
    first model that needs it and kept for the ones after."""

    def __init__(self, spec, ev, out):
        self.spec, self.ev, self.out = spec, ev, out
        self.rows = {"fid": [], "mse": [], "guidance": []}
        self.seeds = _seed_text(ev.seeds)
        self.split, self.u_use = None, {}

    def load_split(self):
        from bcmcore.data import load_split

        if self.split is None:
            spec = self.spec
            self.split = load_split(spec.dataset, spec.inversion_split, limit=spec.inversion_count)

    def sampler_rows(self, i, m, model, base):
        """fid_table: one row per sampler (FID, precision/recall, IS, KID) and its sample grid."""
        ev = self.ev
        for j, s in enumerate(m.samplers):
            fn, steps = _sampler_fn(ev, model, s, f"models[{i}].samplers[{j}]")
            label = s.name or s.recipe or s.sampler
            feats, nfe, sec = ev.generate(
                model,
                fn,
                f"{m.name} {label}",
                inside(self.out, "grids", f"{m.name}-{label}.png"),
                samples_path=_samples_path(self.spec, self.out, f"{m.name}-{label}"),
            )
            scores = ev.score(feats)
            self.rows["fid"].append(
                {
                    **base,
                    "sampler": label,
                    "nfe": nfe,
                    "time_steps": steps,
                    **scores,
                    "samples": len(feats),
                    "seeds": self.seeds,
                    "seconds": round(sec, 2),
                }
            )
            dist.print0(f"[eval] {m.name} {label}: NFE {nfe} " + _score_text(scores))

    def inversion_rows(self, m, model, base):
        """mse_table: invert the inversion split and decode it back, per inversion schedule."""
        ev = self.ev
        for inv in m.inversions:
            steps = _steps_text("invert", inv.times) if m.kind == "bcm" else f"{m.kind} inversion"

            def reconstruct(x, y, rng, inv=inv):
                return (*reconstruct_batch(model, inv, x, y, rng, not ev.vector), x)

            scores, n_inv, n = mse_sweep(ev, model, *self.split, reconstruct, f"{m.name} invert")
            self._mse_row(base, "inversion", n_inv, n, steps, scores)
            dist.print0(f"[eval] {m.name} inversion NFE {n_inv}: MSE {scores['mse']:.5f}")

    def u_use_probe(self, m, model):
        """eval_info's u_use: does a BCM network use u? rel_L on the inversion split, where one is
        loaded (docs/u_use.md)."""
        ev = self.ev
        if m.kind != "bcm" or self.split is None or ev.vector or not dist.is_main():
            return
        x_all, y_all = self.split
        y_in = y_all.to(ev.device) if num_classes(model) else None
        probe = inversion_probe(model, to_float(x_all).to(ev.device), y_in)
        self.u_use[m.name] = {k: round(v, 4) for k, v in u_use_summary(probe).items()}
        dist.print0(f"[eval] {m.name} u-use: {self.u_use[m.name]}")

    def jpeg_rows(self, m, model, base):
        """mse_table: restore JPEG-compressed images, compared with the clean ones (BCM App.
        B.1.2), per restoration schedule."""
        quality = self.spec.jpeg_quality
        for times in m.jpeg:

            def restore(x, y, rng, times=times):
                x_jpeg = editing.jpeg_compress(x, quality)
                x_hat, n = editing.jpeg_restore(model, x_jpeg, times, rng, y)
                return x_hat, len(times) - 1, n, x  # compared with the CLEAN image (App. B.1.2)

            scores, n_inv, n = mse_sweep(self.ev, model, *self.split, restore, f"{m.name} jpeg")
            self._mse_row(base, f"jpeg-q{quality}", n_inv, n, _steps_text("invert", times), scores)

    def _mse_row(self, base, task, n_inv, n, steps, scores):
        self.rows["mse"].append(
            {
                **base,
                "task": task,
                "inversion_nfe": n_inv,
                "nfe": n,
                "time_steps": steps,
                **scores,
                "images": len(self.split[0]),
                "seeds": self.seeds,
            }
        )

    def guidance_rows(self, m, model, base):
        """guidance_table: one row per guidance weight w (FID, VGG16 precision/recall, and the
        class-edit success rate where the spec asks for edits)."""
        if not m.guidance:
            return
        ev, g = self.ev, m.guidance
        for w in g.ws:
            feats, nfe, sec = ev.generate(
                model,
                _guided_fn(ev, model, g, w),
                f"{m.name} w={w:g}",
                inside(self.out, "grids", f"{m.name}-w{w:g}.png"),
                vgg=True,
                samples_path=_samples_path(self.spec, self.out, f"{m.name}-w{w:g}"),
            )
            scores = ev.score(feats, vgg=True)
            row = {
                **base,
                "w": float(w),
                "nfe": nfe,
                **scores,
                "samples": len(feats),
                "seeds": self.seeds,
                "seconds": round(sec, 2),
            }
            if g.edits:
                row.update(self._edit_columns(model, g, w))
            self.rows["guidance"].append(row)
            dist.print0(
                f"[eval] {m.name} w={w:g}: NFE {nfe} "
                + _score_text(scores)
                + (f" edit rate {row['edit_rate']:.3f}" if g.edits else "")
            )

    def _edit_columns(self, model, g, w):
        """The edit columns of a guidance row: `g.edits` split images, each into every other
        class."""
        x_all, y_all = self.split
        n_img = min(g.edits, len(x_all))
        # EDM: a Karras grid of as many points
        times = get_recipe(g.recipe).for_model(model).times
        steps = len(times) - (times[-1] == 0)
        rate, lpips, nfe = edit_rate_sweep(self.ev, model, x_all[:n_img], y_all[:n_img], w, steps)
        return {
            "edit_rate": rate,
            "edit_lpips": lpips,
            "edit_nfe": nfe,
            "lpips_net": _lpips_net(self.ev),
            "edits": n_img * (num_classes(model) - 1),
        }

    def info(self):
        """eval_info.json: the reference, the features, the sample count, the u-use probes."""
        spec, ev = self.spec, self.ev
        info = {
            "dataset": spec.dataset,
            "ref_split": spec.ref_split,
            "reference_count": ev.ref["meta"].get("n"),
            "features": ev._key().key,
            "num_samples": spec.num_samples,
            "world_size": ev.world,
        }
        if self.u_use:
            info["u_use"] = self.u_use
        if ev.extractor is not None and spec.features.kind == "demo":
            from bcmcore.metrics.demo_classifier import load_demo_classifier

            info["demo_classifier_test_accuracy"] = load_demo_classifier(spec.dataset).test_accuracy
        return info
