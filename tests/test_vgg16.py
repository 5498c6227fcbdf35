"""VGG16 precision/recall: the VGG16 architecture (random weights; the real vgg16.pt is staged by
users) through the sweep's feature path, against an independent k-NN computation; and the staged
TorchScript's checks."""

import numpy as np
import pytest
import torch
import torchvision
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from bcmcore.config import UserError
from bcmcore.metrics import prdc, staged, vgg16


class _VGG16Features(torch.nn.Module):
    """torchvision's VGG16 behind the interface of StyleGAN2-ADA's vgg16.pt: float images in
    [0, 255], ImageNet normalisation, fc7 activations (4096-d). Random weights: only the
    architecture is real."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.vgg16(weights=None).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x, return_features: bool = False):
        x = (x / 255 - self.mean) / self.std
        x = torch.flatten(self.net.avgpool(self.net.features(x)), 1)
        return self.net.classifier[:5](x)  # fc6, ReLU, dropout (eval: identity), fc7, ReLU


def _knn_precision_recall(real, fake, k=3):
    """Kynkäänniemi et al. Eq. 1-2 with scikit-learn's k-NN radii and scipy's distances."""

    def radii(x):  # distance to the k-th neighbour other than the point itself
        return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]

    def inside(query, support):
        return float(np.mean((cdist(query, support) <= radii(support)[None]).any(1)))

    return inside(fake, real), inside(real, fake)


def _images(rng, n, blobs):
    """Smooth uint8 images: a few random Gaussian blobs, so the two sets overlap only in part."""
    yy, xx = np.mgrid[:32, :32]
    out = np.zeros((n, 3, 32, 32))
    for i in range(n):
        for _ in range(blobs):
            cy, cx, s = rng.uniform(4, 28), rng.uniform(4, 28), rng.uniform(2, 6)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / s**2)
            out[i] += rng.uniform(0, 1, (3, 1, 1)) * blob
    return (255 * out / out.max()).astype(np.uint8)


def test_vgg16_precision_recall_matches_an_independent_knn_computation():
    torch.manual_seed(0)
    ex = vgg16.extractor_from_module(_VGG16Features())
    rng = np.random.default_rng(0)
    real, fake = _images(rng, 60, 2), _images(rng, 40, 3)
    fr, ff = ex.features(real, batch_size=16, progress=False), ex.features(fake, progress=False)
    assert fr.shape == (60, vgg16.DIM) and ff.shape == (40, vgg16.DIM)
    with torch.no_grad():  # the extractor feeds the network exactly the uint8 values as floats
        direct = ex.model(torch.from_numpy(real[:5]).float()).double().numpy()
    np.testing.assert_allclose(fr[:5], direct, rtol=1e-5, atol=1e-6)
    p, r = prdc.precision_recall(fr, ff, k=3)
    want_p, want_r = _knn_precision_recall(fr, ff)
    assert (p, r) == pytest.approx((want_p, want_r), abs=1e-12)
    assert 0 < p < 1 or 0 < r < 1  # not a degenerate all-or-nothing case


class _FakeVGG(torch.nn.Module):
    def forward(self, x, return_features: bool = False):
        return x.mean((1, 2, 3))[:, None].repeat(1, 4096)


def test_staged_vgg16_torchscript_is_loaded_and_checked(tmp_path):
    path = tmp_path / staged.VGG16.name
    torch.jit.script(_FakeVGG()).save(str(path))
    ex = vgg16.vgg16_extractor(tmp_path)
    f = ex.features(np.full((2, 1, 8, 8), 51, np.uint8), progress=False)
    assert ex.key == "vgg16" and f.shape == (2, 4096) and np.allclose(f, 51)
    path.write_bytes(b"not torchscript")
    with pytest.raises(UserError, match="not StyleGAN2-ADA's VGG16 TorchScript") as e:
        vgg16.vgg16_extractor(path)
    assert staged.VGG16.url in str(e.value)


class _ProjectedVGG(torch.nn.Module):
    """A stand-in vgg16.pt: a fixed random projection of 4x4-pooled images to 4096 features."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 4096)

    def forward(self, x, return_features: bool = False):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def test_sweep_scores_guidance_rows_with_the_staged_vgg16(tmp_path, digits):  # noqa: F811
    """With features.vgg16_path, the reference VGG16 features are those of the seeded P/R subset
    only (no moments), and guidance rows get P/R on the VGG16 columns, the rest on demo features."""
    from bcmcore.data import load_split
    from bcmcore.metrics.evaluator import Evaluator
    from bcmcore.metrics.spec import EvalSpec, FeaturesConfig, GuidanceSpec, ModelSpec

    torch.manual_seed(0)
    net = _ProjectedVGG()
    torch.jit.script(net).save(str(tmp_path / staged.VGG16.name))
    guided = ModelSpec(name="g", network="unused.pt", kind="igct", guidance=GuidanceSpec())
    spec = EvalSpec(
        dataset=str(digits),
        models=(guided,),
        features=FeaturesConfig(kind="demo", vgg16_path=str(tmp_path)),
        num_samples=100,
        pr_real=300,
    )
    ev = Evaluator(spec, device="cpu", progress=False)
    x, _ = load_split(digits, "train")
    keep = np.sort(np.random.default_rng(0).permutation(len(x))[:300])
    with torch.no_grad():
        want = net(torch.as_tensor(np.asarray(x[keep])).float().repeat(1, 3, 1, 1)).numpy()
    np.testing.assert_allclose(ev.vgg_ref, want, rtol=1e-5, atol=1e-5)
    imgs = np.asarray(load_split(digits, "test")[0][:100])
    feats = ev.features_local(imgs, vgg=True)
    assert feats.shape == (100, ev.extractor.dim + vgg16.DIM)
    s = ev.score(feats, vgg=True)
    assert s["vgg_features"] == "vgg16" and s["features"].startswith("demo-")
    p, r = prdc.precision_recall(ev.vgg_ref, feats[:, ev.extractor.dim :])
    assert (s["vgg_precision"], s["vgg_recall"]) == (p, r)
    p, r = prdc.precision_recall(ev.ref["pr_feats"], feats[:, : ev.extractor.dim])
    assert (s["precision"], s["recall"]) == (p, r) and 1 <= s["is"] <= 10
