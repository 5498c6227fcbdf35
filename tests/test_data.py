"""bcmcore.data: exact resume at 1 and 2 ranks with workers, epoch coverage, flips, pairs, damaged
shards."""

import itertools
import json

import numpy as np
import pytest
import torch

from bcmcore.config import UserError
from bcmcore.data import DataConfig, load_split, make_loader
from bcmcore.shards import chunks, write_dataset

N = 23


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """23 random 4x4 RGB images in 5 shards (sizes 5,5,5,5,3), labels = index mod 7."""
    out = tmp_path_factory.mktemp("loader") / "shards"
    x = np.random.default_rng(0).integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
    y = np.arange(N) % 7
    meta = {"dataset": "t", "kind": "image", "resolution": 4, "channels": 3, "num_classes": 7}
    write_dataset(out, {"train": chunks(x, y, 5)}, meta, workers=1)
    return out, torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y)


def cfg(out, **kw):
    base = {"shards": str(out), "in_memory": False, "num_workers": 0, "xflip": True, "paired": True}
    return DataConfig(**{**base, **kw})


def take(it, k):
    return [next(it) for _ in range(k)]


def same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def to_u8(x):
    return torch.round((x + 1) * 127.5).to(torch.uint8)


def ids(batch, data):
    """Which dataset item (up to the flip) each image of the batch is."""
    x = to_u8(batch)
    out = []
    for img in x:
        hit = [
            i
            for i in range(len(data))
            if torch.equal(img, data[i]) or torch.equal(img, data[i].flip(-1))
        ]
        assert len(hit) == 1
        out.append(hit[0])
    return out


def test_resume_one_rank_two_workers(shards):
    out, _, _ = shards
    full = take(make_loader(cfg(out, num_workers=2), 4, seed=3), 16)  # 64 samples: ~3 epochs
    assert same(full, take(make_loader(cfg(out), 4, seed=3), 16))  # worker count does not matter
    assert same(full, take(make_loader(cfg(out, in_memory=True), 4, seed=3), 16))  # nor the source
    resumed = take(make_loader(cfg(out, num_workers=2), 4, seed=3, start_sample=9 * 4), 7)
    assert same(full[9:], resumed)
    other_seed = take(make_loader(cfg(out), 4, seed=4), 16)
    assert not same(full, other_seed)


def test_resume_two_ranks_and_epoch_coverage(shards):
    out, data, labels = shards
    per_rank = {
        r: take(make_loader(cfg(out, num_workers=2), 3, rank=r, world_size=2, seed=1), 12)
        for r in (0, 1)
    }
    for r in (0, 1):
        resumed = take(
            make_loader(
                cfg(out, num_workers=2), 3, rank=r, world_size=2, seed=1, start_sample=5 * 6
            ),
            7,
        )
        assert same(per_rank[r][5:], resumed)
    # Interleave the ranks back into the global stream: each epoch (N positions) is a permutation.
    stream = [i for k in range(12) for r in (0, 1) for i in ids(per_rank[r][k]["x"], data)]
    for e in range(3):
        assert sorted(stream[e * N : (e + 1) * N]) == list(range(N))
    assert stream[:N] != stream[N : 2 * N]  # a new permutation per epoch
    got_y = torch.cat([per_rank[r][k]["y"] for k in range(12) for r in (0, 1)])
    assert torch.equal(got_y, labels[stream])


def test_flips_and_pairs(shards):
    out, data, _ = shards
    batches = take(make_loader(cfg(out), 50, seed=0), 4)
    x = to_u8(torch.cat([b["x"] for b in batches]))
    xs = to_u8(torch.cat([b["x_src"] for b in batches]))
    idx = torch.tensor([i for b in batches for i in ids(b["x"], data)])
    flipped = torch.tensor([not torch.equal(x[k], data[idx[k]]) for k in range(len(x))])
    assert 0.3 < flipped.float().mean() < 0.7  # seeded flips, about half
    src = torch.tensor([i for b in batches for i in ids(b["x_src"], data)])
    assert len(set(src.tolist())) == N  # uniform over the whole split
    assert (src != idx).float().mean() > 0.8  # independent of the target
    assert xs.shape == x.shape
    plain = next(make_loader(cfg(out, xflip=False, paired=False, shuffle=False), N))
    assert set(plain) == {"x", "y"} and torch.equal(to_u8(plain["x"]), data)


def test_load_split(shards):
    out, data, labels = shards
    x, y = load_split(out, "train")
    assert x.dtype == torch.uint8 and torch.equal(x, data) and torch.equal(y, labels)
    x2, y2 = load_split(out, "train", num_workers=2)
    assert torch.equal(x2, data) and torch.equal(y2, labels)
    with pytest.raises(UserError, match="no split 'test'"):
        load_split(out, "test")


def copy_shards(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_shard(shards, tmp_path):
    out = copy_shards(shards[0], tmp_path / "s")
    p = out / "train-000002.tar"
    p.write_bytes(p.read_bytes()[:-700])
    with pytest.raises(
        UserError, match=r"train-000002\.tar: \d+ bytes, manifest says \d+ \(truncated"
    ):
        make_loader(cfg(out), 4)


def test_corrupt_header_clear_error_from_worker(shards, tmp_path):
    out = copy_shards(shards[0], tmp_path / "s")
    p = out / "train-000003.tar"
    b = bytearray(p.read_bytes())
    b[1024 + 3] ^= 0xFF  # inside the 2nd header (sample 15's .png name): checksum breaks
    p.write_bytes(bytes(b))
    it = make_loader(cfg(out, num_workers=2, shuffle=False, paired=False), 4)
    with pytest.raises(UserError) as e:
        take(it, 6)
    msg = str(e.value)
    # the sample's CRC-32 (bcmcore.shards) catches it first, naming the shard and the sample
    assert "train-000003.tar: sample 00000015 fails its checksum" in msg and "Traceback" not in msg


def test_sha256_mismatch(shards, tmp_path):
    out = copy_shards(shards[0], tmp_path / "s")
    p = out / "train-000001.tar"
    b = bytearray(p.read_bytes())
    b[600] ^= 0xFF  # inside sample 5's PNG payload: same size, headers intact
    p.write_bytes(bytes(b))
    with pytest.raises(UserError, match=r"train-000001\.tar: sha256 does not match the manifest"):
        make_loader(cfg(out, verify_sha256=True), 4)
    # Without verification the sample's CRC-32 catches it when the sample is read.
    with pytest.raises(UserError, match=r"train-000001\.tar: sample 00000005 fails its checksum"):
        take(make_loader(cfg(out, shuffle=False, paired=False), 4), 3)


def test_missing_or_bad_manifest(tmp_path):
    with pytest.raises(UserError, match=r"manifest\.json: manifest not found"):
        make_loader(cfg(tmp_path), 4)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="expected a shard manifest"):
        make_loader(cfg(tmp_path), 4)


def test_vector_shards_batch_shape(tmp_path):
    x = np.random.default_rng(1).standard_normal((10, 2)).astype(np.float32)
    meta = {"dataset": "v", "kind": "vector", "dim": 2, "num_classes": 2}
    write_dataset(tmp_path / "v", {"train": chunks(x, np.arange(10) % 2, 4)}, meta, workers=1)
    b = next(
        make_loader(DataConfig(shards=str(tmp_path / "v"), xflip=True), 10, seed=0, device="cpu")
    )  # in memory
    assert b["x"].shape == (10, 2) and b["x"].dtype == torch.float32
    rows = {tuple(r) for r in x.tolist()}
    assert all(tuple(r) in rows for r in b["x"].tolist())  # flips never touch vectors
    assert sorted(map(tuple, b["x"].tolist())) == sorted(rows)  # one epoch = a permutation
    assert list(itertools.islice(make_loader(DataConfig(shards=str(tmp_path / "v")), 3), 2))


def test_benchmark_runs_and_reports_ratio(capsys):
    from bcmcore.bench.loader_rate import benchmark

    rows = benchmark([8], [0, 2], n=64, batch=8, batches=2)
    assert [r[:2] for r in rows] == [(8, 0), (8, 2)]
    table = [
        line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("    8 ")
    ]
    assert [row[1] for row in table] == ["0", "2"] and all(float(row[4]) > 0 for row in table)
    # img/s per worker: the shard loader's rate over its workers (workers=0: the main process)
    assert [float(row[5]) for row in table] == pytest.approx([rows[0][2], rows[1][2] / 2], abs=0.5)


@pytest.mark.parametrize("content", ["photo", "smooth", "noise"])
def test_benchmark_images_and_their_png_cost(tmp_path, content):
    from bcmcore.bench.loader_rate import _images, write_shards

    x = _images(6, 40, content)  # what write_shards writes (seed 0)
    assert x.shape == (6, 40, 40, 3) and x.dtype == np.uint8
    assert not (x == x[0]).all()  # six different images
    out, bytes_per_pixel = write_shards(tmp_path, 40, 6, content)
    assert np.array_equal(load_split(out, "train")[0].numpy(), x.transpose(0, 3, 1, 2))
    # photos compress like photos (LSUN / FFHQ PNGs: 1.5-2.5 bytes/pixel); noise does not compress
    assert (1.0 < bytes_per_pixel < 2.8) if content != "noise" else bytes_per_pixel > 2.9


def test_benchmark_rejects_unknown_content():
    from bcmcore.bench.loader_rate import _images

    with pytest.raises(UserError, match="--content: expected photo, smooth or noise"):
        _images(2, 8, "fractal")


def test_bad_loader_settings(shards):
    from bcmcore.config import ConfigError

    with pytest.raises(ConfigError, match="data.num_workers: expected an integer >= 0"):
        make_loader(cfg(shards[0], num_workers=-1), 4)
    with pytest.raises(ConfigError, match="rank 2 outside world size 2"):
        make_loader(cfg(shards[0]), 4, rank=2, world_size=2)
