"""Feature extractors for FID / precision-recall, fed with uint8 images exactly as clean-fid feeds
them.

* `inception`: clean-fid's TorchScript Inception-v3 (pool3, 2048-d), built from a file the user
  stages (nothing downloads). Mode `clean` resizes each image to 299x299 with clean-fid's
  PIL-bicubic float resizer; `legacy_tensorflow` hands the raw image to the network, which resizes
  inside (the papers' CIFAR-10 numbers).
* `demo`: the small digits classifier of `demo_classifier.py` (penultimate layer), no resize.
Both go through `FeatureExtractor.features(images_uint8)`; the FID code after that is shared.
"""

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from bcmcore.config import UserError
from bcmcore.metrics import staged

INCEPTION_FILE = staged.INCEPTION.name
INCEPTION_SHA256 = staged.INCEPTION.sha256
INCEPTION_BYTES = staged.INCEPTION.size_bytes
INCEPTION_URL = staged.INCEPTION.url
MODES = ("clean", "legacy_tensorflow")


def inception_file(path):
    """The staged Inception file (a path to it, or to its folder), verified by size and sha256."""
    entry = dataclasses.replace(
        staged.INCEPTION, sha256=INCEPTION_SHA256, size_bytes=INCEPTION_BYTES
    )
    return staged.check(path, entry)


class FeatureExtractor:
    """uint8 images [N, C, H, W] -> float64 features [N, dim], batched, with a progress bar.

    `key` names the extractor in cache files (mode + model), so statistics of different extractors
    never mix.
    """

    def __init__(
        self, model, key, dim, resize=None, rgb=True, to_input=None, device="cpu", logits=None
    ):
        self.model, self.key, self.dim, self.device = model, key, dim, torch.device(device)
        self.logits = logits  # features [N, dim] -> class logits [N, K] (Inception Score) or None
        self.resize = (
            resize  # clean-fid resizer on one HWC image (uint8 in, float or uint8 out) or None
        )
        self.rgb = (
            rgb  # grey images are repeated to 3 channels, like PIL's convert("RGB") in clean-fid
        )
        self.to_input = (
            to_input  # optional transform of the uint8 batch (the demo net takes [-1, 1] floats)
        )
        self._pool = None

    def _prepare(self, batch):
        if self.rgb and batch.shape[1] == 1:
            batch = np.repeat(batch, 3, axis=1)
        if self.resize is None:
            return torch.from_numpy(batch).float()

        def one(img):  # clean-fid resizes one HWC numpy image at a time (resize.build_resizer)
            r = np.asarray(self.resize(np.ascontiguousarray(img.transpose(1, 2, 0))))
            return torch.from_numpy(np.ascontiguousarray(r.transpose(2, 0, 1))).float()

        if self._pool is None:  # PIL releases the GIL while resizing: threads keep the GPU fed
            self._pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))
        return torch.stack(
            list(self._pool.map(one, batch))
        )  # float in [0, 255], as clean-fid's ResizeDataset

    @torch.no_grad()
    def class_probs(self, feats):
        """p(y | x) [N, K] from features (softmax of the extractor's own classifier layer)."""
        if self.logits is None:
            raise UserError(f"features {self.key!r}: no classifier layer, so no Inception Score")
        f = torch.as_tensor(np.asarray(feats), dtype=torch.float32, device=self.device)
        return torch.softmax(self.logits(f).double(), 1).cpu().numpy()

    @torch.no_grad()
    def features(self, images, batch_size=256, desc="features", progress=True):
        images = np.asarray(images.cpu() if torch.is_tensor(images) else images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"features expect uint8 images [N, C, H, W], got {images.dtype} {images.shape}"
            )
        out = np.empty((len(images), self.dim), np.float64)
        bar = tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False)
        for i in bar:
            x = self._prepare(images[i : i + batch_size])
            x = self.to_input(x) if self.to_input is not None else x
            out[i : i + len(x)] = self.model(x.to(self.device)).double().cpu().numpy()
        return out


def inception_extractor(path, mode="clean", device="cpu"):
    """clean-fid's InceptionV3W built from the staged file (download=False), with the mode's
    resizer."""
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    if mode not in MODES:
        raise UserError(f"features.mode: expected one of {list(MODES)}, got {mode!r}")
    file = inception_file(path)
    model = InceptionV3W(
        str(file.parent), download=False, resize_inside=(mode == "legacy_tensorflow")
    )
    model = model.to(device).eval()
    return FeatureExtractor(
        model,
        f"{mode}-inception",
        2048,
        resize=build_resizer(mode),
        device=device,
        logits=_inception_logits(model.base),
    )


def _inception_logits(base):
    """The TorchScript's 1008-way softmax layer on pool3 features, without its bias: StyleGAN2-ADA's
    IS (`no_output_bias=True`) does so to match the original TensorFlow Inception Score code."""
    if not hasattr(base, "output"):
        return None
    weight = base.output.weight.detach()
    return lambda f: f @ weight.T.to(f)


def demo_extractor(shard_dir, device="cpu", collective=True):
    """Penultimate-layer features of the demo digits classifier (trained and cached on first
    use; `collective=False` from one rank alone: demo_classifier.load_demo_classifier)."""
    from bcmcore.metrics.demo_classifier import load_demo_classifier

    clf = load_demo_classifier(shard_dir, device=device, collective=collective)
    return FeatureExtractor(
        clf.features,
        f"demo-{clf.digest}",
        clf.feature_dim,
        rgb=False,
        to_input=lambda x: x / 127.5 - 1,
        device=device,
        logits=clf.head,  # the classifier's own head: the demo's IS (at most 10, its class count)
    )


def build_extractor(cfg, shard_dir, device="cpu"):
    """From the spec's `features` section: {kind: inception|demo, mode, inception_path}."""
    if cfg.kind == "demo":
        return demo_extractor(shard_dir, device)
    if not cfg.inception_path:
        raise UserError(
            f"features.inception_path: required for kind 'inception' (the staged {INCEPTION_FILE})"
        )
    return inception_extractor(cfg.inception_path, cfg.mode, device)
