"""The demo set's feature extractor and judge: a small CNN trained on the demo training split.

No Inception file exists offline for the demo digits, so, as MNIST-style FIDs do, the penultimate
layer of a classifier trained on the same data provides the features. Training is seeded and runs on
the CPU in seconds; the result is cached beside the shards (`demo-classifier.pt`, plain tensors,
loaded with weights_only). The iGCT editing tests use `classify` to check that edited digits land in
the target class.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bcmcore.config import UserError
from bcmcore.images import to_float
from bcmcore.util import atomic_torch_save

FORMAT = "bcm-demo-classifier/1"
FILE = "demo-classifier.pt"
FEATURE_DIM = 64


class DemoClassifier(nn.Module):
    """conv 3x3 (x3, two stride-2) -> 4x4 pool -> 64-d features -> ReLU -> classes. Input: images in
    [-1, 1].

    The features are taken before the last ReLU, so no dimension is constant (a dead unit would make
    the feature covariance singular).
    """

    def __init__(self, in_channels, num_classes, feature_dim=FEATURE_DIM):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_classes))
        self.in_channels, self.num_classes, self.feature_dim = in_channels, num_classes, feature_dim
        self.digest, self.test_accuracy = "untrained", float("nan")

    def features(self, x):
        """Penultimate activations [B, feature_dim] (the FID features)."""
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))

    @torch.no_grad()
    def classify(self, x):
        """Predicted labels (LongTensor [B]) of images in [-1, 1] (float) or uint8 [0, 255]."""
        x = torch.as_tensor(x)
        x = to_float(x)
        dev = next(self.parameters()).device
        return self(x.to(dev)).argmax(1).to(x.device)


def _shift(x, gen, max_shift=1):
    """Random translation by up to `max_shift` pixels (zero = black background): cheap, seeded
    augmentation."""
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=gen)).tolist()
    return torch.roll(x, (dy, dx), dims=(2, 3))


def train_demo_classifier(x, y, epochs=10, batch_size=64, lr=2e-3, seed=0):
    """Deterministic training on uint8 images [N, C, H, W] and labels [N] (CPU, ~10 s on one
    thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # tiny convolutions: extra threads only add contention (and nondeterminism)
    try:
        return _train(
            to_float(x), torch.as_tensor(np.asarray(y)).long(), epochs, batch_size, lr, seed
        )
    finally:
        torch.set_num_threads(threads)


def _train(x, y, epochs, batch_size, lr, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DemoClassifier(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(net(_shift(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return net.eval()


def accuracy(net, x, y, batch_size=512):
    y = torch.as_tensor(np.asarray(y)).long()
    pred = torch.cat(
        [net.classify(to_float(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    )
    return float((pred == y).float().mean())


def _save(net, path, meta):
    atomic_torch_save(
        {
            "format": FORMAT,
            "state_dict": net.state_dict(),
            "in_channels": net.in_channels,
            "num_classes": net.num_classes,
            "feature_dim": net.feature_dim,
            **meta,
        },
        path,
    )


def _load(path, device):
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: unreadable demo classifier ({e}); delete it to retrain") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise UserError(
            f"{path}: not a demo classifier file (format {FORMAT} expected); delete it to retrain"
        )
    net = DemoClassifier(d["in_channels"], d["num_classes"], d["feature_dim"])
    net.load_state_dict(d["state_dict"])
    net.digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    net.test_accuracy = float(d["test_accuracy"])
    return net.to(device).eval().requires_grad_(False)


def _data_of(path):
    """The data digest a cached classifier was trained on (None: unreadable or from before)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("data_digest")
    except Exception:
        return None


def load_demo_classifier(shard_dir, device="cpu", path=None, train_if_missing=True,
                         collective=True):  # fmt: skip
    """The demo classifier for a shard dir; trained (rank 0, deterministic) and cached on first use.

    `path` defaults to `<shard_dir>/demo-classifier.pt`. Attributes: `test_accuracy`, `digest`
    (cache key). `collective=False`: this process alone checks and trains, with no barrier (the
    training monitor calls it on rank 0 while the other ranks are inside a training step; a
    barrier there waits for them forever).
    """
    from bcmcore import dist
    from bcmcore.data import load_split
    from bcmcore.shards import data_digest, read_manifest

    main = dist.is_main() or not collective
    barrier = dist.barrier if collective else lambda: None
    path = Path(path) if path is not None else Path(shard_dir) / FILE
    data = data_digest(shard_dir)
    if path.is_file() and train_if_missing and _data_of(path) != data:
        if main:
            print(f"{path}: trained on other data than {shard_dir} holds now: retraining")
            path.unlink(missing_ok=True)  # our own cache file, of a dataset that no longer exists
        barrier()
    if not path.is_file():
        if not train_if_missing:
            raise UserError(f"{path}: demo classifier not found")
        if main:
            splits = read_manifest(shard_dir).get("splits", {})
            x, y = load_split(shard_dir, "train")
            net = train_demo_classifier(x, y)
            test = "test" if "test" in splits else "train"
            xt, yt = load_split(shard_dir, test)
            _save(
                net,
                path,
                {
                    "test_accuracy": accuracy(net, xt, yt),
                    "accuracy_split": test,
                    "train_count": int(len(x)),
                    "data_digest": data,  # the shards it was trained on (shards.data_digest)
                },
            )
        barrier()
    return _load(path, device)
