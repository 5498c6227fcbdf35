import os
import shutil
import subprocess

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (badly so on a shared
    CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def slurm_is_up():
    """A live controller answers `scontrol ping` (binaries alone are not enough)."""
    if not shutil.which("scontrol"):
        return False
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def pytest_collection_modifyitems(config, items):
    # Under CI (or SLURM_REQUIRED=1) a missing Slurm is a failure, never a skip: the tests then run
    # and fail.
    required = os.environ.get("CI") == "true" or os.environ.get("SLURM_REQUIRED") == "1"
    up = None
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "slurm" in item.keywords and not required:
            up = slurm_is_up() if up is None else up
            if not up:
                item.add_marker(
                    pytest.mark.skip(reason="dev Slurm cluster not running (make slurm-up)")
                )


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Real gmm2d WebDataset shards written by `bcm prep gmm2d`."""
    from bcmcore.cli.prep import prep as main

    out = tmp_path_factory.mktemp("gmm2d") / "shards"
    assert (
        main(
            [
                "gmm2d",
                "--out",
                str(out),
                "--n-train",
                "512",
                "--n-test",
                "64",
                "--shard-size",
                "256",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Real demo shards (data_prep digits) and the demo classifier trained on them (once per
    module)."""
    from bcmcore.cli import main as bcm
    from bcmcore.metrics import demo_classifier

    out = tmp_path_factory.mktemp("digits") / "shards"
    assert bcm(["prep", "digits", "--out", str(out), "--resolution", "16", "--workers", "1"]) == 0
    demo_classifier.load_demo_classifier(out)
    return out
