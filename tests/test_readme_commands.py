"""The README's "Use a trained network" command lines run as printed (issue 27), on stand-ins for
the demo's outputs built the cheap way: the real 8x8 digit shards (`bcm prep digits`), untrained
networks of the demo's shapes at `results/digits/runs/<exp>/network-final.pt`, and a small sweep
spec at the demo's `results/digits/eval/bcm_ft/spec.json`. A renamed flag, recipe or path in the
README fails here."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from helpers import demo_tiny, save_untrained_networks
from PIL import Image

from bcmcore.cli import main as bcm
from bcmcore.nets import save_network

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Use a trained network"


def readme_commands():
    """Every `bcm ...` line of the fenced blocks of the README's SECTION, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"^```\n(.*?)^```", text[start:end], flags=re.S | re.M)
    return [line for b in blocks for line in b.splitlines() if line.startswith("bcm ")]


def test_the_section_covers_every_first_day_command():
    cmds = readme_commands()
    first = {shlex.split(c)[1] for c in cmds}
    assert {"sample", "invert", "edit", "eval", "tune", "import", "convert"} <= first
    tasks = {shlex.split(c)[2] for c in cmds if c.startswith("bcm edit ")}
    from bcmcore.cli.flags import EDIT_TASKS

    # colorize needs a colour network: the demo's digits are grey (README shows a colour toy)
    assert tasks == set(EDIT_TASKS) - {"colorize"}
    assert all("results/digits/" in c or "my/" in c for c in cmds)


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory):
    """A folder laid out like a clone after `make demo` (stand-in networks, real shards)."""
    root = tmp_path_factory.mktemp("clone")
    shards = root / "results/digits/shards"
    assert bcm(["prep", "digits", "--out", str(shards), "--resolution", "8", "--workers", "1"]) == 0
    nets = save_untrained_networks(root, demo_tiny, 10, 5)
    runs = root / "results/digits/runs"
    for exp, kind in (("bcm_ft", "bcm"), ("igct", "igct"), ("edm", "edm")):
        (runs / exp).mkdir(parents=True)
        nets[kind].rename(runs / exp / "network-final.pt")
    (runs / "ict").mkdir()
    save_network(
        runs / "ict/network-final.pt", demo_tiny("cm"), 5, {"note": "untrained test network"}
    )
    spec = {  # the demo's bcm_ft sweep, shrunk (the workflow writes the real one)
        "dataset": "results/digits/shards",
        "features": {"kind": "demo"},
        "num_samples": 500,
        "batch_size": 100,
        "inversion_count": 20,
        "models": [
            {
                "name": "bcm_ft",
                "network": "results/digits/runs/bcm_ft/network-final.pt",
                "kind": "bcm",
                "samplers": [{"recipe": "demo-nfe1"}, {"recipe": "digits-bcm_ft-nfe2"}],
            }
        ],
    }
    (root / "results/digits/eval/bcm_ft").mkdir(parents=True)
    (root / "results/digits/eval/bcm_ft/spec.json").write_text(json.dumps(spec))
    # the sweep's kept samples (spec save_samples), stood in for by the 300 test digits
    from bcmcore.data import load_split

    samples = root / "results/digits/eval/bcm_ft/samples"
    samples.mkdir()
    x_test = load_split(shards, "test")[0].numpy().transpose(0, 2, 3, 1)
    np.savez(samples / "bcm_ft-digits-bcm_ft-nfe2.npz", arr_0=x_test, seeds=np.arange(300))
    # "any folder of PNGs": the demo's own test digits, grey 8x8
    x, _ = load_split(shards, "test")
    pngs = root / "my/invert/pngs"
    pngs.mkdir(parents=True)
    for i, a in enumerate(x[:4].numpy()):
        Image.fromarray(a[0], "L").save(pngs / f"{i}.png")
    (root / "tests").symlink_to(ROOT / "tests")  # the shipped import fixture
    return root


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_printed(demo_outputs, monkeypatch, command):
    monkeypatch.chdir(demo_outputs)
    argv = shlex.split(command)
    _inputs_first(argv)
    assert bcm(argv[1:] + ([] if "--device" in argv else _cpu(argv[1]))) == 0, command
    out = Path(argv[argv.index("--out") + 1])
    assert out.exists() and (out.is_file() or any(out.iterdir())), f"{command}: wrote nothing"
    if argv[1] == "sample":
        assert np.load(out / "samples.npz")["arr_0"].dtype == np.uint8


def _inputs_first(argv):
    """Run the README lines that write this line's `my/...` inputs when they are missing (the
    import line comes before the lines that sample / convert its network; a test run alone
    with -k still finds them)."""
    for i, arg in enumerate(argv[2:], 2):
        if arg.startswith("my/") and argv[i - 1] != "--out" and not Path(arg).exists():
            writers = [shlex.split(c) for c in readme_commands() if f"--out {arg}" in c]
            assert writers, f"no README line writes {arg}"
            _inputs_first(writers[0])
            assert bcm(writers[0][1:] + _cpu(writers[0][1])) == 0, writers[0]


def _cpu(command):
    """CI machines have no GPU; the flag only pins the device where a GPU exists."""
    return ["--device", "cpu"] if command in ("sample", "invert", "edit", "eval", "tune") else []
