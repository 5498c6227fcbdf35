"""Staged weight files: each one's missing-file error names the path, what the file is and where to
get it; a file that does not match what its source publishes is refused."""

import dataclasses

import pytest

from bcmcore.config import UserError
from bcmcore.metrics import features, perceptual, staged, vgg16

LOADERS = {
    "inception": (staged.INCEPTION, features.inception_file),
    "vgg16": (staged.VGG16, vgg16.vgg16_extractor),
    "alexnet": (staged.ALEXNET, perceptual.lpips_alex),
}


@pytest.mark.parametrize("name", list(LOADERS))
def test_missing_file_error_names_the_path_and_the_source(tmp_path, name):
    entry, load = LOADERS[name]
    with pytest.raises(UserError) as e:
        load(tmp_path)  # a folder: the file is looked for under its own name
    msg = str(e.value)
    assert str(tmp_path / entry.name) in msg and entry.url in msg and entry.key in msg
    assert "missing" in msg


def test_every_entry_says_where_its_checksum_comes_from():
    for entry in (staged.INCEPTION, staged.VGG16, staged.ALEXNET, staged.LPIPS_ALEX_LIN):
        assert entry.checksum_source
        assert entry.verified == bool(entry.sha256)
    assert not staged.VGG16.verified and "UNVERIFIED" in staged.VGG16.checksum_source


def test_size_and_published_digest_prefix_are_checked(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"0" * 2048)
    entry = dataclasses.replace(staged.ALEXNET, name="w.pth", size_mib=0.002, sha256_prefix="")
    assert staged.check(f, entry) == f  # 2048 bytes = 0.002 MiB
    with pytest.raises(UserError, match="expected 0.003 MiB"):
        staged.check(f, dataclasses.replace(entry, size_mib=0.003))
    with pytest.raises(UserError, match=r"sha256 7be5be79\.\.\..*torchvision"):
        staged.check(f, dataclasses.replace(entry, sha256_prefix="7be5be79"))
    # no published checksum (vgg16.pt): any file of that name passes the file check
    g = tmp_path / staged.VGG16.name
    g.write_bytes(b"anything")
    assert staged.check(tmp_path, staged.VGG16) == g
