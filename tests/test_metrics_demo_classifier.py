"""Demo digits: the demo classifier (features + judge), demo-set FIDs, reference caching, full `bcm
eval` sweep."""

import json

import numpy as np
import pytest
import torch
from helpers import save_untrained_networks

from bcmcore.cli import main as bcm
from bcmcore.data import load_split
from bcmcore.metrics import demo_classifier, fid
from bcmcore.metrics.edit_rate import edit_success_rate
from bcmcore.metrics.features import demo_extractor
from bcmcore.metrics.report import read_csv
from bcmcore.nets import ModelConfig, NetConfig, build_model


def test_demo_classifier_is_accurate_and_cached(digits):
    clf = demo_classifier.load_demo_classifier(digits)
    assert (digits / demo_classifier.FILE).is_file()
    assert clf.test_accuracy > 0.95  # measured 0.980 on the 300 held-out digits
    xt, yt = load_split(digits, "test")
    assert float((clf.classify(xt) == yt).float().mean()) == pytest.approx(clf.test_accuracy)
    assert float((clf.classify(xt.float() / 127.5 - 1) == yt).float().mean()) == pytest.approx(
        clf.test_accuracy
    )


def test_demo_classifier_training_is_deterministic(digits):
    x, y = load_split(digits, "train")
    a = demo_classifier.train_demo_classifier(x[:128], y[:128], epochs=1)
    b = demo_classifier.train_demo_classifier(x[:128], y[:128], epochs=1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_demo_fids_order_real_halves_below_blur_below_noise(digits):
    ex = demo_extractor(digits)
    x, _ = load_split(digits, "train")
    f = ex.features(x, progress=False)
    assert abs(fid.fid_from_feats(f, f)) < 1e-6
    halves = fid.fid_from_feats(f[::2], f[1::2])
    blur = torch.nn.functional.avg_pool2d(x.float(), 3, 1, 1).round().to(torch.uint8)
    blurred = fid.fid_from_feats(f, ex.features(blur, progress=False))
    noise = torch.randint(
        0, 256, x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    noisy = fid.fid_from_feats(f, ex.features(noise, progress=False))
    assert halves < 10 and blurred > 3 * halves and noisy > 500  # measured: 4.0, 72, 2618


def test_reference_stats_in_chunks_equal_the_whole_split_at_once(digits, tmp_path):
    """ImageNet does not fit in memory: the split streams in chunks (a chunk size that splits shards
    and blocks unevenly here), and the statistics and the precision/recall subset come out as from
    one array."""
    from bcmcore.data import iter_split, load_labels

    x, y = load_split(digits, "train")
    parts = list(iter_split(digits, "train", chunk=600))
    assert [len(p[0]) for p in parts] == [600, 600, len(x) - 1200]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(
        load_labels(digits, "train"), y
    )
    first = load_split(digits, "train", limit=700)
    assert torch.equal(first[0], x[:700]) and torch.equal(first[1], y[:700])
    feats_fn = lambda v: v.double().flatten(1)[:, 40:60].numpy() ** 1.5 + 3.0  # noqa: E731 (non-zero mean)
    whole = feats_fn(x)
    moments = fid.Moments()
    for a in range(0, len(whole), 333):
        moments.add(whole[a : a + 333])
    mu, sigma = moments.stats()
    np.testing.assert_allclose(mu, whole.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        sigma, np.cov(whole, rowvar=False), rtol=1e-9, atol=1e-9 * np.abs(sigma).max()
    )

    class Key:
        key = "chunk-test"

    sizes = []
    ref = fid.reference_stats(
        digits, "train", Key, lambda v: sizes.append(len(v)) or feats_fn(v), pr_count=100, chunk=500
    )
    assert sizes == [500, 500, len(x) - 1000]
    keep = np.sort(np.random.default_rng(0).permutation(len(x))[:100])
    assert np.array_equal(ref["pr_feats"], whole[keep].astype(np.float32)) and ref["meta"][
        "n"
    ] == len(x)
    np.testing.assert_allclose(
        ref["sigma"], np.cov(whole, rowvar=False), rtol=1e-9, atol=1e-9 * np.abs(sigma).max()
    )
    fid.reference_path(digits, "train", Key.key).unlink()


def test_reference_stats_are_cached_and_keyed_by_extractor(digits):
    class Key:
        key = "test-extractor"

    calls = []

    def feats_fn(x):
        calls.append(len(x))
        return x.float().flatten(1)[:, :20].numpy() + np.random.default_rng(len(calls)).normal(
            size=(len(x), 20)
        )

    a = fid.reference_stats(digits, "train", Key, feats_fn, pr_count=100)
    b = fid.reference_stats(
        digits, "train", Key, lambda x: pytest.fail("recomputed a cached reference"), 100
    )
    assert calls == [1497] and np.array_equal(a["mu"], b["mu"]) and b["pr_feats"].shape == (100, 20)
    Key.key = "another-extractor"
    fid.reference_stats(digits, "train", Key, feats_fn, pr_count=100)
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------ end to
# end


def _tiny(kind, num_classes=0):
    net = NetConfig(
        arch="ncsnpp",
        data_channels=1,
        resolution=16,
        channels=8,
        ch_mult=(1, 2),
        num_blocks=1,
        attn_res=(),
        two_time=(kind == "bcm"),
        num_classes=num_classes,
    )
    torch.manual_seed(0)
    return build_model(ModelConfig(kind=kind, net=net))


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    return save_untrained_networks(tmp_path_factory.mktemp("nets"), _tiny, 10, 7)


def _spec(tmp_path, digits, networks, **over):
    spec = {
        "dataset": str(digits),
        "features": {"kind": "demo"},
        "num_samples": 80,
        "batch_size": 40,
        "inversion_count": 24,
        "grid": 16,
        "pr_real": 500,
        "models": [
            {
                "name": "bcm",
                "network": str(networks["bcm"]),
                "kind": "bcm",
                "samplers": [
                    {"recipe": "demo-nfe1"},
                    {"recipe": "demo-nfe2"},
                    {"recipe": "demo-nfe3"},
                    {"recipe": "demo-nfe4"},
                ],
                "inversions": [{"times": [0.07, 80.0]}, {"times": [0.07, 2.0, 80.0]}],
                "jpeg": [[0.07, 0.5]],
            },
            {
                "name": "igct",
                "network": str(networks["igct"]),
                "kind": "igct",
                "samplers": [{"sampler": "igct", "steps": 2}],
                "inversions": [{}],
                "guidance": {"ws": [1, 3], "edits": 6},
            },
            {
                "name": "cfg-edm",
                "network": str(networks["edm"]),
                "kind": "edm",
                "guidance": {"ws": [1, 3], "recipe": "demo-heun", "edits": 6},
            },
        ],
    }
    spec.update(over)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.slow
def test_bcm_eval_digits_end_to_end_writes_tables_plots_and_grids(
    tmp_path, digits, networks, monkeypatch
):
    from bcmcore import recipes

    # a short Heun schedule keeps the CFG baseline cheap on the CPU (4 Heun steps + 1 Euler step: 9
    # NFE, 18 with CFG)
    monkeypatch.setitem(recipes.RECIPES, "demo-heun", recipes.Recipe("heun", karras=(5, (), True)))
    out = tmp_path / "eval"
    assert (
        bcm(
            [
                "eval",
                "--spec",
                str(_spec(tmp_path, digits, networks)),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = read_csv(out / "fid_table.csv")
    assert [(r["model"], r["sampler"], r["nfe"]) for r in rows] == [
        ("bcm", "demo-nfe1", "1"),
        ("bcm", "demo-nfe2", "2"),
        ("bcm", "demo-nfe3", "3"),
        ("bcm", "demo-nfe4", "4"),
        ("igct", "igct", "2"),
    ]
    for r in rows:  # an untrained net makes garbage: a large FID, but finite numbers from the run
        assert (
            float(r["fid"]) > 10
            and 0 <= float(r["precision"]) <= 1
            and 0 <= float(r["recall"]) <= 1
        )
        assert r["samples"] == "80" and r["seeds"] == "0-79" and r["checkpoint"].endswith(".pt")
        # IS from the demo classifier's own head (10 classes), KID on the same demo features
        assert 1 <= float(r["is"]) <= 10 and float(r["is_std"]) >= 0 and float(r["kid"]) > 0
        assert r["features"].startswith("demo-")
    mse = read_csv(out / "mse_table.csv")
    assert [(r["model"], r["task"], r["inversion_nfe"], r["nfe"]) for r in mse] == [
        ("bcm", "inversion", "1", "2"),
        ("bcm", "inversion", "2", "3"),
        ("bcm", "jpeg-q20", "1", "2"),
        ("igct", "inversion", "1", "2"),
    ]
    assert all(0 < float(r["mse"]) < 1 for r in mse)
    # PSNR agrees with the MSE column (per image on the uint8 pixels; mean of logs <= log of mean)
    for r in mse:
        assert float(r["psnr"]) >= 10 * np.log10(1 / float(r["mse"])) - 1e-3
        assert -1 <= float(r["ssim"]) <= 1 and float(r["lpips"]) > 0
        assert r["lpips_net"].startswith("lpips-demo-")  # no AlexNet file staged: the demo stand-in
    guid = read_csv(out / "guidance_table.csv")
    assert [(r["model"], r["w"], r["nfe"]) for r in guid] == [
        ("igct", "1", "1"),
        ("igct", "3", "1"),
        ("cfg-edm", "1", "9"),
        ("cfg-edm", "3", "18"),
    ]
    # class editing: 6 test images x 9 other classes per w; iGCT edits take 2 NFE, EDM ODE inversion
    # + CFG Heun
    assert [(r["edits"], r["edit_nfe"]) for r in guid] == [("54", "2")] * 2 + [
        ("54", "17"),
        ("54", "26"),
    ]
    from bcmcore.nets import load_network

    x, y = load_split(digits, "test")
    clf = demo_classifier.load_demo_classifier(digits)
    for r in guid:  # the sweep's rate is the edit-rate command's rate on the same images
        model, _ = load_network(networks["igct" if r["kind"] == "igct" else "edm"])
        want = edit_success_rate(
            model, clf.classify, x[:6].float() / 127.5 - 1, y[:6], [float(r["w"])], steps=5
        )[float(r["w"])]
        assert float(r["edit_rate"]) == pytest.approx(want, abs=1e-6), r
        assert float(r["edit_lpips"]) > 0 and r["lpips_net"].startswith("lpips-demo-")
        # no vgg16.pt staged: the demo features stand in for VGG16, and the table says so
        assert (r["vgg_precision"], r["vgg_recall"]) == (r["precision"], r["recall"])
        assert "stand-in" in r["vgg_features"] and r["vgg_features"].startswith("demo-")
    for name in (
        "plots/fid_vs_nfe.png",
        "plots/mse_vs_nfe.png",
        "plots/guidance.png",
        "grids/bcm-demo-nfe1.png",
        "grids/cfg-edm-w3.png",
        "eval_info.json",
    ):
        assert (out / name).stat().st_size > 0, name
    info = json.loads((out / "eval_info.json").read_text())
    assert info["demo_classifier_test_accuracy"] > 0.95 and info["reference_count"] == 1497
    assert not list(out.rglob(".tmp-*"))


def test_classifier_and_reference_stats_of_old_data_are_not_reused(tmp_path):
    """Data identity (shards.data_digest): a re-prepared dataset never gets the classifier or the
    reference statistics of the old one, even when their files are copied back beside it."""
    from bcmcore.cli.prep import prep

    out = tmp_path / "s"
    flags = ["--out", str(out), "--resolution", "8", "--workers", "1"]
    prep(["digits", *flags])
    first = demo_classifier.load_demo_classifier(out)
    ext = demo_extractor(out)
    ref = fid.reference_stats(out, "test", ext, ext.features, pr_count=50)
    saved = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith("m")}
    saved = {n: b for n, b in saved.items() if n.endswith((".pt", ".npz"))}
    assert len(saved) == 2
    prep(["digits", *flags, "--seed", "1"])  # another test split
    assert not any((out / n).exists() for n in saved)  # the swap left the old caches behind
    for name, data in saved.items():
        (out / name).write_bytes(data)
    second = demo_classifier.load_demo_classifier(out)
    assert second.digest != first.digest
    ext2 = demo_extractor(out)
    ref2 = fid.reference_stats(out, "test", ext2, ext2.features, pr_count=50)
    assert ref2["meta"]["manifest"] != ref["meta"]["manifest"]
    assert not np.allclose(ref2["mu"], ref["mu"])
