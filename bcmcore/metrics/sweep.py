"""Run an evaluation sweep: samples per (model, sampler, NFE, w) -> FID / precision / recall / IS /
KID (and VGG16 precision/recall per w); inversion and JPEG restoration -> MSE / PSNR / SSIM / LPIPS;
class edits -> success rate and LPIPS. Every rank takes its share of seeds (seed i -> sample i,
whatever the split); features are all-gathered in seed order, rank 0 scores and writes.
"""

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bcmcore import dist, editing, sampling
from bcmcore.config import UserError
from bcmcore.editing import mse_per_item
from bcmcore.images import save_grid, to_float, to_uint8
from bcmcore.metrics import fid as fidlib
from bcmcore.metrics import image_quality, perceptual, prdc, report, scoring, vgg16
from bcmcore.metrics.edit_rate import edit_hits
from bcmcore.metrics.features import build_extractor
from bcmcore.metrics.probe import inversion_probe, u_use_summary
from bcmcore.metrics.scoring import gather_rows
from bcmcore.nets.facts import data_shape, num_classes
from bcmcore.paths import inside
from bcmcore.recipes import Recipe, get_recipe


class Evaluator:
    """Holds the dataset, the feature extractor and the reference statistics for one sweep."""

    def __init__(self, spec, device=None, progress=True):
        from bcmcore.shards import read_manifest

        self.spec, self.progress = spec, progress
        self.rank, self.world, _, self.device = dist.init(device)
        self.manifest = read_manifest(spec.dataset)
        self.vector = self.manifest.get("kind") == "vector"
        if self.vector != (spec.features.kind == "raw"):
            raise UserError(
                f"spec features.kind: {'raw' if self.vector else 'demo or inception'} expected for "
                f"{self.manifest.get('kind')} data in {spec.dataset}"
            )
        self.shape = (
            (self.manifest["dim"],)
            if self.vector
            else (
                self.manifest["channels"],
                self.manifest["resolution"],
                self.manifest["resolution"],
            )
        )
        self.extractor = (
            None if self.vector else build_extractor(spec.features, spec.dataset, self.device)
        )
        if any(m.samplers or m.guidance for m in spec.models):  # fail before sampling, not after
            fidlib.check_count(spec.num_samples, self._dim(), "spec num_samples")
        # the precision/recall subset of the reference is seeded independently of the sample seeds
        # (cache reuse)
        self.ref = fidlib.reference_stats(
            spec.dataset, spec.ref_split, self._key(), self.features_all, spec.pr_real
        )
        self.seeds = np.arange(spec.seed, spec.seed + spec.num_samples)
        self.mine = np.arange(
            self.rank, spec.num_samples, self.world
        )  # this rank's share of seed indices
        self._train_labels = None
        guided_models = any(m.guidance for m in spec.models)
        self.vgg = self.vgg_ref = None  # VGG16 precision/recall of guidance sweeps (iGCT)
        if spec.features.vgg16_path and guided_models and not self.vector:
            self.vgg = vgg16.vgg16_extractor(spec.features.vgg16_path, self.device)
            self.vgg_ref = fidlib.reference_stats(
                spec.dataset,
                spec.ref_split,
                self.vgg,
                lambda x: self.features_all(x, self.vgg),
                spec.pr_real,
                moments=False,
            )["pr_feats"]
        self.lpips = (
            None
            if self.vector or not any(m.inversions or m.jpeg or guided_models for m in spec.models)
            else perceptual.build_lpips(spec.features, spec.dataset, self.device)
        )

    def _key(self):
        return _RawKey() if self.vector else self.extractor

    # ---------------------------------------------------------------------------------- features
    def features_local(self, x, vgg=False, extractor=None):
        """Features of this rank's samples: uint8 images, or float vectors (raw features). `vgg`:
        the VGG16 features appended as further columns (`score` splits them off)."""
        if self.vector:
            return np.asarray(x, np.float64)
        f = (extractor or self.extractor).features(x, self.spec.batch_size, progress=False)
        if vgg and self.vgg is not None:
            f = np.concatenate([f, self.vgg.features(x, self.spec.batch_size, progress=False)], 1)
        return f

    def features_all(self, x, extractor=None):
        """Features of a whole array (e.g. the reference split), computed in shards across ranks."""
        return scoring.sharded_features(x, lambda v: self.features_local(v, extractor=extractor))

    def score(self, feats, vgg=False):
        """FID against the reference statistics; precision/recall and KID against the reference
        feature subset; IS from the extractor's classifier layer; with `vgg`, precision/recall on
        VGG16 features (the FID features stand in, and say so, where no vgg16.pt is staged)."""
        f = feats[:, : self._dim()]
        s = scoring.score(f, self.ref, self.spec, self.extractor, self._key().key, self.device)
        if vgg and self.vgg is not None:
            s["vgg_precision"], s["vgg_recall"] = prdc.precision_recall(
                self.vgg_ref, feats[:, self._dim() :], k=self.spec.pr_k, device=self.device
            )
            s["vgg_features"] = self.vgg.key
        elif vgg:
            s["vgg_precision"], s["vgg_recall"] = s["precision"], s["recall"]
            s["vgg_features"] = f"{s['features']} (stand-in: features.vgg16_path not set)"
        return s

    # ---------------------------------------------------------------------------------- labels and
    # output
    def labels(self, model, idx):
        """Class labels of seeds `idx` (None for unconditional models): per-seed draws,
        batch-independent."""
        num = num_classes(model)
        if not num:
            return None
        if self.spec.labels == "uniform":  # the same labels as `bcm sample --seeds` draws
            return sampling.seeded_labels(self.seeds[idx], num, self.device)
        if (
            self._train_labels is None
        ):  # "data": the label of a per-seed random training item (iGCT §8)
            from bcmcore.data import load_labels

            self._train_labels = load_labels(self.spec.dataset, self.spec.ref_split).to(self.device)
        return self._train_labels[
            sampling.seeded_labels(self.seeds[idx], len(self._train_labels), self.device)
        ]

    def to_output(self, x):
        """Generated batch -> uint8 NCHW images (or float vectors), clamped as the protocol says."""
        if self.vector:
            return x.detach().double().cpu().numpy()
        x = x.clamp(-1, 1) if self.spec.clamp else x
        return to_uint8(x).numpy()

    def batches(self, desc):
        b = self.spec.batch_size
        bar = tqdm(
            range(0, len(self.mine), b),
            desc=desc,
            disable=not (self.progress and dist.is_main()),
            leave=False,
        )
        for i in bar:
            yield self.mine[i : i + b]

    # ---------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, model, fn, desc="samples", grid_path=None, vgg=False, samples_path=None):
        """Run fn(z_rng, y, idx) -> (x, nfe) over this rank's seeds; -> (features of all seeds, nfe,
        seconds). With a samples_path, every seed's image is kept there too (`_save_samples`)."""
        feats, nfe, first, t0 = [], None, None, time.time()
        kept = []  # (images uint8, labels) per batch, for samples_path
        for idx in self.batches(desc):
            rng = sampling.SeededRNG(self.seeds[idx], self.device)
            y = self.labels(model, idx)
            x, n = fn(rng, y, idx)
            if nfe is not None and n != nfe:
                raise RuntimeError(f"{desc}: NFE changed between batches ({nfe} -> {n})")
            nfe, out = n, self.to_output(x)
            first = out if first is None else first
            feats.append(self.features_local(out, vgg))
            if samples_path is not None and not self.vector:
                kept.append((out, np.full(len(idx), -1) if y is None else y.cpu().numpy()))
        width = self._dim() + (vgg16.DIM if vgg and self.vgg is not None else 0)
        local = np.concatenate(feats) if feats else np.zeros((0, width))
        all_feats = gather_rows(local, self.mine, len(self.seeds)).astype(np.float64)
        if samples_path is not None and not self.vector:
            self._save_samples(kept, samples_path)
        if grid_path is not None and dist.is_main() and first is not None and not self.vector:
            save_grid(grid_path, first[: self.spec.grid])
        nfe = _agree(nfe)
        return all_feats, nfe, time.time() - t0

    def _dim(self):
        return self.shape[0] if self.vector else self.extractor.dim

    def _save_samples(self, kept, path):
        """Rank 0 writes every seed's image in seed order: arr_0 uint8 NHWC, arr_1 labels (-1:
        unconditional), seeds; what `bcm eval --images` scores to this row's numbers."""
        from bcmcore.runner import save_npz

        c, h, w = self.shape
        imgs = np.concatenate([k[0] for k in kept]) if kept else np.zeros((0, c, h, w), np.uint8)
        labels = np.concatenate([k[1] for k in kept]) if kept else np.zeros(0)
        rows = dist.gather_rows(
            np.concatenate([imgs.reshape(len(imgs), -1), labels[:, None]], 1),
            self.mine,
            len(self.seeds),
        )  # pixels and labels are small integers: exact in float64
        if dist.is_main():
            images = rows[:, :-1].astype(np.uint8).reshape(-1, c, h, w).transpose(0, 2, 3, 1)
            arrays = {"arr_0": images, "arr_1": rows[:, -1].astype(np.int64), "seeds": self.seeds}
            save_npz(path, arrays)


def _samples_path(spec, out, name):
    return inside(out, "samples", f"{name}.npz") if spec.save_samples else None


def _agree(nfe):
    """Every rank ran the same schedule; ranks without seeds report -1 and take the others'
    value."""
    if dist.world_size() == 1:
        return nfe
    return dist.max_int(-1 if nfe is None else nfe)


def _score_text(s):
    text = f"FID {s['fid']:.3f} P {s['precision']:.3f} R {s['recall']:.3f} KID {s['kid']:.4f}"
    text += f" IS {s['is']:.2f}" if "is" in s else ""
    if "vgg_precision" in s:
        text += f" VGG P {s['vgg_precision']:.3f} R {s['vgg_recall']:.3f}"
    return text


class _RawKey:
    key = "raw"


# --------------------------------------------------------------------------------------------------
# the sweep


def load_model(m, device, shape=None):
    """The spec's network file; its kind must be the one the spec declares."""
    from bcmcore.nets import load_network

    model, meta = load_network(m.network, device)
    if meta["kind"] != m.kind:
        raise UserError(
            f"{m.network}: a network of kind {meta['kind']!r}, but the spec's model {m.name!r} "
            f"declares kind {m.kind!r} (check models[].network / models[].kind)"
        )
    if shape is not None and tuple(data_shape(model)) != tuple(shape):
        raise UserError(
            f"{m.network}: the network makes samples of shape {tuple(data_shape(model))}, "
            f"the dataset has {tuple(shape)} (a network trained on other data?)"
        )
    return model.requires_grad_(False), meta


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
    return (float(means[0]) if width == 1 else means), _agree(n_inv), _agree(n)


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
