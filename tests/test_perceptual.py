"""LPIPS: Eq. 1 of Zhang et al. recomputed by hand, the metric's known answers, and the staged-file
checks."""

import dataclasses

import numpy as np
import pytest
import torch
import torchvision

from bcmcore.config import UserError
from bcmcore.metrics import perceptual, staged
from bcmcore.util import sha256_file


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """A torchvision AlexNet state dict with random weights (the real file's format, not its
    numbers; the classifier's 58 M parameters, which LPIPS never reads, left out)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("alex") / staged.ALEXNET.name
    state = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def lpips_alex(alexnet_file):
    size = alexnet_file.stat().st_size
    entry = dataclasses.replace(
        staged.ALEXNET, sha256_prefix=sha256_file(alexnet_file)[:8], size_mib=round(size / 2**20, 3)
    )
    with pytest.MonkeyPatch.context() as mp:  # the random file's own size and digest prefix
        mp.setattr(staged, "ALEXNET", entry)
        return perceptual.lpips_alex(alexnet_file)


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1


def _eq1_by_hand(alexnet_file, x, y):
    """Eq. 1 from torchvision's AlexNet and the lpips wheel's linear heads, without lpips' net."""
    from importlib.metadata import version

    feats = torchvision.models.alexnet(weights=None).features
    feats.load_state_dict(
        {k[len("features.") :]: v for k, v in torch.load(alexnet_file).items() if "features" in k}
    )
    heads = torch.load(perceptual._lin_heads_file(), map_location="cpu")
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    assert version("lpips") == "0.1.4"  # the scaling constants above are this version's
    taps = [1, 4, 7, 9, 11]  # the ReLUs after conv1..conv5
    total = torch.zeros(len(x))
    a, b = (x - shift) / scale, (y - shift) / scale
    for i, layer in enumerate(feats[: taps[-1] + 1]):
        a, b = layer(a), layer(b)
        if i in taps:
            n = taps.index(i)
            na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            w = heads[f"lin{n}.model.1.weight"]
            total += torch.nn.functional.conv2d((na - nb) ** 2, w).mean((1, 2, 3))
    return total.double().numpy()


@torch.no_grad()
def test_lpips_alex_is_eq1_with_the_staged_backbone_and_the_wheels_heads(alexnet_file, lpips_alex):
    x, y = _images(4, 1), _images(4, 2)
    np.testing.assert_allclose(lpips_alex(x, y), _eq1_by_hand(alexnet_file, x, y), rtol=1e-4)


def test_lpips_of_an_image_with_itself_is_zero_symmetric_and_positive_otherwise(lpips_alex):
    from bcmcore.metrics.demo_classifier import DemoClassifier

    torch.manual_seed(0)
    demo = perceptual.LPIPS(
        perceptual._FeatureLPIPS(DemoClassifier(1, 10).body, [1, 3, 5]), "demo", "cpu", rgb=False
    )
    for metric, x, y in ((lpips_alex, _images(3, 3), _images(3, 4)), (demo, *_grey_pair())):
        assert np.allclose(metric(x, x), 0, atol=1e-7)
        d = metric(x, y)
        np.testing.assert_allclose(d, metric(y, x), rtol=1e-6)
        assert np.all(d > 1e-4)


def _grey_pair():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    return x, x.flip(3)


def test_grey_images_are_repeated_to_rgb_for_alexnet(lpips_alex):
    x, y = _images(2, 6)[:, :1], _images(2, 7)[:, :1]
    np.testing.assert_allclose(
        lpips_alex(x, y), lpips_alex(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)), rtol=1e-6
    )


def test_a_changed_linear_head_file_is_refused(tmp_path, monkeypatch, alexnet_file):
    bad = tmp_path / staged.LPIPS_ALEX_LIN.name
    bad.write_bytes(b"x" * staged.LPIPS_ALEX_LIN.size_bytes)
    monkeypatch.setattr(perceptual, "_lin_heads_file", lambda: bad)
    monkeypatch.setattr(
        staged,
        "ALEXNET",
        dataclasses.replace(staged.ALEXNET, sha256_prefix="", size_mib=0.0),
    )
    with pytest.raises(UserError, match="LPIPS v0.1 linear heads") as e:
        perceptual.lpips_alex(alexnet_file)
    assert str(bad) in str(e.value) and "RECORD" in str(e.value)
