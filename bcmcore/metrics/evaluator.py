"""The evaluator of a sweep: a spec's settings on this rank's device, the feature networks and
reference statistics, seeded batches split over ranks, and the scoring of generated sets (FID,
precision / recall, IS, KID) against the reference, with the saved grids and samples."""

import time

import numpy as np
import torch
from tqdm import tqdm

from bcmcore import dist, sampling
from bcmcore.config import UserError
from bcmcore.images import save_grid, to_uint8
from bcmcore.metrics import fid as fidlib
from bcmcore.metrics import perceptual, prdc, scoring, vgg16
from bcmcore.metrics.features import build_extractor
from bcmcore.metrics.scoring import gather_rows
from bcmcore.nets.facts import data_shape, num_classes


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
        nfe = agree_nfe(nfe)
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


def agree_nfe(nfe):
    """Every rank ran the same schedule; ranks without seeds report -1 and take the others'
    value."""
    if dist.world_size() == 1:
        return nfe
    return dist.max_int(-1 if nfe is None else nfe)


class _RawKey:
    key = "raw"


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
