"""Metrics: Fréchet distance, precision/recall, clean-fid feature conventions, Inception file
checks, MSE."""

import numpy as np
import pytest
import torch
from helpers import FakeInception

from bcmcore.config import UserError
from bcmcore.metrics import features, fid, prdc
from bcmcore.metrics.spec import InversionSpec
from bcmcore.metrics.sweep import mse_per_item, reconstruct_batch
from bcmcore.sampling import SeededRNG
from bcmcore.toy import DEMO_GMM, ExactFlowMap
from bcmcore.util import sha256_file


def _random_gaussian_feats(rng, n, d, shift=0.0):
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ a.T + shift


def _independent_fid(f1, f2):
    """FID by an independent route: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), symmetric eigh
    square roots."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_frechet_distance_matches_independent_computation():
    rng = np.random.default_rng(0)
    f1 = _random_gaussian_feats(rng, 400, 12)
    f2 = _random_gaussian_feats(rng, 300, 12, shift=0.3)
    ours = fid.fid_from_feats(f1, f2)
    assert ours == pytest.approx(_independent_fid(f1, f2), rel=1e-6)
    assert ours > 1.0


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    # FID(N(m1, diag a), N(m2, diag b)) = |m1 - m2|^2 + sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expect = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expect, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_and_is_symmetric():
    rng = np.random.default_rng(1)
    f1, f2 = _random_gaussian_feats(rng, 200, 8), _random_gaussian_feats(rng, 200, 8, 1.0)
    assert abs(fid.fid_from_feats(f1, f1)) < 1e-6
    assert fid.fid_from_feats(f1, f2) == pytest.approx(fid.fid_from_feats(f2, f1), rel=1e-6)


def test_too_few_samples_for_the_feature_dimension_is_a_clear_error():
    rng = np.random.default_rng(2)
    with pytest.raises(UserError, match=r"30 samples but the features have 64 dimensions"):
        fid.fid_from_feats(rng.standard_normal((30, 64)), rng.standard_normal((100, 64)))


# ------------------------------------------------------------------------------------------
# precision / recall


def test_kth_radius_excludes_the_point_itself():
    pts = torch.arange(10, dtype=torch.float64)[:, None]  # 0, 1, ..., 9 on a line
    r = prdc.kth_radii(pts, k=3)  # squared distances
    assert r[0].item() == 9.0 and r[5].item() == 4.0  # 3rd neighbour of 0 is 3; of 5 is 3 or 7


def test_precision_recall_known_answers():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((300, 5))
    assert prdc.precision_recall(real, real.copy()) == (1.0, 1.0)
    assert prdc.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # half the generated points are real points, half lie far away: precision exactly 1/2
    fake = np.concatenate([real[:150], real[150:] + 100.0])
    p, r = prdc.precision_recall(real, fake)
    assert p == 0.5
    # the copied half of the real points lies inside the generated manifold (the sparser fake set's
    # balls are wider, so most of the others do too)
    assert r >= 0.5


def test_precision_recall_are_asymmetric_as_defined():
    """Generated points collapsed onto one real mode: high precision, low recall (and swapped: the
    reverse)."""
    rng = np.random.default_rng(4)
    real = np.concatenate([rng.standard_normal((200, 2)), rng.standard_normal((200, 2)) + 20])
    fake = rng.standard_normal((400, 2))
    p, r = prdc.precision_recall(real, fake)
    assert p > 0.95 and 0.4 < r < 0.6
    p2, r2 = prdc.precision_recall(fake, real)
    assert 0.4 < p2 < 0.6 and r2 > 0.95


# ------------------------------------------------------------------------------------------
# Inception file


def test_missing_inception_file_names_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(UserError) as e:
        features.inception_file(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / features.INCEPTION_FILE) in msg and features.INCEPTION_URL in msg


def test_wrong_inception_file_is_rejected_by_size_and_hash(tmp_path):
    bad = tmp_path / features.INCEPTION_FILE
    bad.write_bytes(b"not torchscript")
    with pytest.raises(UserError, match="not the expected clean-fid"):
        features.inception_file(bad)
    with pytest.raises(UserError, match="features.inception_path: required"):
        from bcmcore.metrics.spec import FeaturesConfig

        features.build_extractor(FeaturesConfig(kind="inception"), tmp_path)


# ------------------------------------------------------------------------------------------
# clean-fid conventions


class _TinyNet(torch.nn.Module):
    """Deterministic stand-in for Inception: [B, 3, H, W] in [0, 255] -> [B, 6]."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(6, 3, 5, 5, generator=g)

    def forward(self, x):
        return torch.nn.functional.conv2d(x / 255.0, self.w, stride=3).relu().mean((2, 3))


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
@pytest.mark.parametrize("channels", [1, 3])
def test_features_match_clean_fid_folder_pipeline(tmp_path, mode, channels):
    """Our in-memory path gives clean-fid's own features (PNG folder, its resizer, RGB conversion,
    batching)."""
    from cleanfid import fid as cfid
    from cleanfid.resize import build_resizer
    from PIL import Image

    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, (12, channels, 16, 16), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im[0] if channels == 1 else im.transpose(1, 2, 0)).save(
            tmp_path / f"{i:02d}.png"
        )
    net = _TinyNet()
    theirs = cfid.get_folder_features(
        str(tmp_path),
        net,
        num_workers=0,
        batch_size=5,
        device=torch.device("cpu"),
        mode=mode,
        verbose=False,
    )
    ours = features.FeatureExtractor(net, "t", 6, resize=build_resizer(mode)).features(
        imgs, batch_size=4, progress=False
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# reconstruction MSE


def test_inversion_mse_of_the_exact_flow_map():
    """Exact flow map: inversion to T and 1-step decoding return x exactly without the initial
    noise; with it, they return the PF-ODE image of x + t0 z at sigma_min (BCM Alg. 5: the round
    trip through T is the identity)."""
    model = ExactFlowMap(DEMO_GMM)
    x = torch.as_tensor(DEMO_GMM.sample(48, np.random.default_rng(6))[0], dtype=torch.float64)
    seeds = list(range(100, 148))
    exact = InversionSpec(times=(0.002, 80.0), initial_noise=False)
    x_hat, n_inv, n = reconstruct_batch(model, exact, x, None, SeededRNG(seeds), clamp=False)
    assert (n_inv, n) == (1, 2)
    assert mse_per_item(x_hat, x, vector=True).max() < 1e-10
    t0 = 0.07
    noisy = InversionSpec(times=(t0, 5.0, 80.0))
    x_hat, n_inv, n = reconstruct_batch(model, noisy, x, None, SeededRNG(seeds), clamp=False)
    assert (n_inv, n) == (2, 3)
    z = SeededRNG(seeds).randn((2,), dtype=torch.float64)  # the initial noise of Alg. 5
    expect = DEMO_GMM.flow((x + t0 * z).numpy(), t0, 0.002)
    np.testing.assert_allclose(x_hat.numpy(), expect, atol=1e-6)
    mse = mse_per_item(x_hat, x, True)
    assert 1e-5 < mse.mean() < 1e-2  # the noise is not undone: MSE > 0


def test_image_mse_is_on_quantised_unit_range():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.full((2, 1, 4, 4), 0.5)  # [-1, 1] -> uint8 128 vs 191 -> 63/255 apart
    np.testing.assert_allclose(mse_per_item(a, b).numpy(), [(63 / 255) ** 2] * 2, rtol=1e-12)
    assert mse_per_item(a, a + 1e-4).max() == 0  # below one quantisation step


# ------------------------------------------------------------------------------------------
# Inception plumbing


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_inception_extractor_is_built_from_the_staged_file_without_downloading(
    tmp_path, monkeypatch, mode
):
    path = tmp_path / features.INCEPTION_FILE
    torch.jit.script(FakeInception()).save(str(path))
    monkeypatch.setattr(features, "INCEPTION_BYTES", path.stat().st_size)
    monkeypatch.setattr(features, "INCEPTION_SHA256", sha256_file(path))
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("tried to download"))
    ex = features.inception_extractor(tmp_path, mode)
    assert ex.key == f"{mode}-inception" and ex.dim == 2048
    imgs = np.random.default_rng(7).integers(0, 256, (3, 1, 16, 16), dtype=np.uint8)
    f = ex.features(imgs, progress=False)
    assert f.shape == (3, 2048)
    # grey -> RGB, 0..255 -> (x - 128) / 128 inside InceptionV3W: channel means are equal and match
    # the image
    expect = (imgs.reshape(3, -1).mean(1) - 128) / 128
    np.testing.assert_allclose(f[:, 0], f[:, 1], rtol=1e-6)
    np.testing.assert_allclose(f[:, 0], expect, atol=0.02)


def test_grids_enlarge_small_images_pixel_for_pixel(tmp_path):
    """8x8 demo digits are shown 4x (nearest: each pixel a 4x4 square); 32 px and up stay 1:1."""
    from PIL import Image

    from bcmcore.images import save_grid

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)
    save_grid(tmp_path / "s.png", small, ncol=3)
    g = np.array(Image.open(tmp_path / "s.png"))
    assert g.shape == (33 + 1, 3 * 33 + 1)
    tile = g[1:33, 1 + 33 : 1 + 33 + 32]  # the second image
    assert np.array_equal(tile, small[1, 0].repeat(4, 0).repeat(4, 1))
    big = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    save_grid(tmp_path / "b.png", big, ncol=2)
    g = np.array(Image.open(tmp_path / "b.png"))
    assert g.shape == (33 + 1, 2 * 33 + 1, 3)
    assert np.array_equal(g[1:33, 34:66], big[1].transpose(1, 2, 0))


def test_metric_column_types_name_columns_of_the_tables():
    """The numeric column types (metrics/report.py, read back by workflow/scripts/tables.py) name
    only columns of the tables, each once, and `typed` turns them into numbers."""
    from bcmcore.metrics import report

    columns = {c for cols in report.COLUMNS.values() for c in cols}
    numeric = report.INTS + report.FLOATS
    assert len(numeric) == len(set(numeric)) and set(numeric) <= columns
    row = report.typed({"nfe": "2", "fid": "3.5", "model": "ict", "mse": ""})
    assert row == {"nfe": 2, "fid": 3.5, "model": "ict", "mse": ""}
