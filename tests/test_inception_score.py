"""Inception Score: known answers, an independent route, and the logits taken from the Inception
file."""

import numpy as np
import pytest
import torch

from bcmcore.metrics import features
from bcmcore.metrics.inception_score import inception_score
from bcmcore.util import sha256_file


def test_confident_predictions_spread_evenly_over_k_classes_score_k():
    k = 7
    probs = np.tile(np.eye(k), (10 * 3, 1))  # every split holds each class 3 times
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_identical_predictions_score_one():
    p = np.random.default_rng(0).dirichlet(np.ones(10))
    mean, std = inception_score(np.tile(p, (200, 1)))
    assert mean == pytest.approx(1, abs=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_matches_the_entropy_identity():
    """E_x KL(p(y|x) || p(y)) = H(p(y)) - E_x H(p(y|x)), computed per split independently."""
    probs = np.random.default_rng(1).dirichlet(np.full(12, 0.3), size=500)
    want = []
    for part in np.split(probs, 10):
        marginal = part.mean(0)
        h_marginal = -(marginal * np.log(marginal)).sum()
        h_cond = -(part * np.log(part)).sum(1).mean()
        want.append(np.exp(h_marginal - h_cond))
    mean, std = inception_score(probs)
    assert mean == pytest.approx(np.mean(want), rel=1e-10) and std == pytest.approx(np.std(want))
    assert 1 < mean < 12


def test_rejects_what_is_not_a_probability_table():
    with pytest.raises(ValueError, match="probability"):
        inception_score(np.ones((20, 3)))
    with pytest.raises(ValueError, match="N >= 10"):
        inception_score(np.eye(3))


class _InceptionWithOutput(torch.nn.Module):
    """The interface of NVIDIA's Inception TorchScript: pool3 `layers`, the 1008-way `output`."""

    def __init__(self):
        super().__init__()
        pool = torch.nn.AdaptiveAvgPool2d(1)
        self.layers = torch.nn.Sequential(pool, torch.nn.Conv2d(3, 2048, 1))
        self.output = torch.nn.Linear(2048, 1008)
        torch.nn.init.constant_(self.output.bias, 5.0)

    def forward(self, x, return_features: bool = False):
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear")
        return self.layers((x - 128) / 128).view(x.shape[0], 2048)


def test_inception_class_probabilities_use_the_output_layer_without_its_bias(tmp_path, monkeypatch):
    """StyleGAN2-ADA's IS calls the network with no_output_bias=True: softmax(W f), not
    softmax(W f + b)."""
    torch.manual_seed(0)
    net = _InceptionWithOutput()
    path = tmp_path / features.INCEPTION_FILE
    torch.jit.script(net).save(str(path))
    monkeypatch.setattr(features, "INCEPTION_BYTES", path.stat().st_size)
    monkeypatch.setattr(features, "INCEPTION_SHA256", sha256_file(path))
    ex = features.inception_extractor(tmp_path, "legacy_tensorflow")
    imgs = np.random.default_rng(2).integers(0, 256, (12, 3, 8, 8), dtype=np.uint8)
    f = ex.features(imgs, progress=False)
    probs = ex.class_probs(f)
    logits = torch.as_tensor(f, dtype=torch.float32) @ net.output.weight.detach().T
    want = torch.softmax(logits.double(), 1).numpy()
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-12)
    assert probs.shape == (12, 1008) and np.allclose(probs.sum(1), 1)
    assert inception_score(probs, splits=2)[0] >= 1
