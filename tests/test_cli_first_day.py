"""A new user's first day (issue 27): `bcm sample` with no flags on every network kind, `bcm
invert` of the demo's own grey PNGs, a CLI that explains itself, and one rule turning sampler +
times into a recipe for the CLI, the sweep spec and the workflow."""

import argparse
import json

import numpy as np
import pytest
import torch
from helpers import demo_tiny, save_untrained_networks
from PIL import Image

from bcmcore.cli import commands
from bcmcore.cli import main as bcm
from bcmcore.cli.flags import subcommands
from bcmcore.cli.sample import sample_parser, sample_recipe
from bcmcore.config import ConfigError, UserError, from_dict
from bcmcore.metrics.spec import SamplerSpec
from bcmcore.recipes import RECIPES, SCHEDULES, build


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    return save_untrained_networks(tmp_path_factory.mktemp("nets"), demo_tiny, 10, 5)


# ------------------------------------------------------------------------------ first-day paths


@pytest.mark.parametrize("kind", ["bcm", "igct", "edm"])
def test_sample_with_no_flags_uses_the_kinds_default(networks, tmp_path, kind):
    # acea26b: igct failed ("steps must be 1 or 2, got 18": --num-steps defaulted to EDM's 18)
    out = tmp_path / kind
    args = ["--network", str(networks[kind]), "--out", str(out), "--seeds", "0-3", "--device"]
    assert bcm(["sample", *args, "cpu"]) == 0
    info = json.loads((out / "samples.json").read_text())
    assert (info["sampler"], info["nfe"]) == {
        "bcm": ("onestep", 1),
        "igct": ("igct", 1),
        "edm": ("heun", 35),  # EDM's 18-point grid: 17 Heun steps + 1 Euler step
    }[kind]
    assert np.load(out / "samples.npz")["arr_0"].shape == (4, 8, 8, 1)


def _grey_pngs(folder, n=4, size=8, mode="L"):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").convert(mode).save(
            folder / f"{i:03d}.png"
        )
    return folder


@pytest.mark.parametrize("kind", ["bcm", "edm"])
def test_invert_grey_pngs_on_the_demos_one_channel_networks(networks, tmp_path, kind):
    # acea26b: every PNG became RGB, then a raw conv2d traceback on the 1-channel network
    pngs = _grey_pngs(tmp_path / "pngs")
    out = tmp_path / "inv"
    steps = ["--steps", "0.07,80"] if kind == "bcm" else ["--num-steps", "4"]
    argv = ["invert", "--network", str(networks[kind]), "--input", str(pngs), "--indices", "0-3"]
    assert bcm([*argv, "--out", str(out), "--device", "cpu", *steps]) == 0
    recon = np.load(out / "invert.npz")["arr_0"]
    assert recon.shape == (4, 8, 8, 1)


def test_invert_converts_rgb_pngs_by_pils_luma(networks, tmp_path):
    from bcmcore.runner import load_inputs

    grey = _grey_pngs(tmp_path / "grey")
    rgb = _grey_pngs(tmp_path / "rgb", mode="RGB")
    a, _ = load_inputs(input=str(grey), shape=(1, 8, 8))
    b, _ = load_inputs(input=str(rgb), shape=(1, 8, 8))
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b)  # grey -> RGB -> L is lossless
    c, _ = load_inputs(input=str(grey), shape=(3, 8, 8))
    assert c.shape == (4, 3, 8, 8) and torch.equal(c[:, :1], a) and torch.equal(c[:, 2:], a)


def test_invert_of_wrong_size_pngs_is_one_clear_error(networks, tmp_path, capsys):
    pngs = _grey_pngs(tmp_path / "big", size=16)
    argv = ["invert", "--network", str(networks["bcm"]), "--input", str(pngs), "--out"]
    assert bcm([*argv, str(tmp_path / "o"), "--device", "cpu", "--steps", "0.07,80"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "takes 1-channel 8x8 images, got 1-channel 16x16" in err
    assert str(pngs) in err and not (tmp_path / "o" / "invert.npz").exists()


# ---------------------------------------------------------------------- a CLI that explains itself


def test_help_lists_every_command_with_a_summary(capsys):
    assert bcm(["--help"]) == 0
    out = capsys.readouterr().out
    for name, handler in commands().items():
        line = next(row for row in out.splitlines() if row.split()[:1] == [name])
        assert len(line.split()) > 3, f"{name} has no one-line summary"
        assert handler.__doc__.strip().split("\n")[0] in line


def test_version(capsys):
    from bcmcore import __version__

    assert bcm(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bcm {__version__}"


def test_mistyped_command_suggests_the_nearest(capsys):
    assert bcm(["sampel", "--out", "x"]) == 2
    assert "did you mean sample?" in capsys.readouterr().err
    assert bcm(["zzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def _parsers(monkeypatch):
    """Every command's argparse parser (and its subcommands'), caught as the handler parses."""
    caught = {}

    class Caught(Exception):
        pass

    def parse(self, args=None, namespace=None):
        caught[self.prog] = self
        raise Caught

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse)
    for handler in commands().values():
        with pytest.raises(Caught):
            handler(["--help"])
    for p in list(caught.values()):
        for sub in subcommands(p).values():
            caught[sub.prog] = sub
    return caught


def test_every_option_shows_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping (argparse breaks lines at hyphens)
    parsers = _parsers(monkeypatch)
    assert {"bcm sample", "bcm edit", "bcm bench train", "bcm prep digits"} <= set(parsers)
    for prog, p in parsers.items():
        text = " ".join(p.format_help().split())
        for a in p._actions:
            if not a.option_strings or a.default is None or a.default is False:
                continue
            if a.default == argparse.SUPPRESS:
                continue
            assert f"(default: {a.default})" in text, f"{prog} {a.option_strings[0]}"


def test_edit_and_invert_help_name_their_schedules(monkeypatch, capsys):
    for cmd, table in (("edit", SCHEDULES), ("invert", SCHEDULES), ("sample", RECIPES)):
        with pytest.raises(SystemExit):
            bcm([cmd, "--help"])
        out = capsys.readouterr().out
        for name in table:
            assert f"  {name} " in out, (cmd, name)
    with pytest.raises(SystemExit):
        bcm(["edit", "--help"])
    out = capsys.readouterr().out
    assert "demo-inpaint              inpaint    0.05 -> 0.5 -> 2; generate 2 -> eps" in out
    assert "interpolate" in out and "inpaint-refine" in out and "cm-inpaint" in out


# --------------------------------------------------- one rule: sampler + times (+ pairs) -> recipe


class Sigmas:
    sigma_min, sigma_max = 0.002, 80.0


def _cli(kind, *flags):
    args = sample_parser().parse_args(["--network", "n", "--out", "o", *flags])
    return sample_recipe(args, kind).for_model(Sigmas)


def _spec(kind, **keys):
    return from_dict(SamplerSpec, keys, "s").resolve("s", kind).for_model(Sigmas)


@pytest.mark.parametrize(
    "flags, keys, times",
    [
        (["--sampler", "ancestral", "--steps", "80,2.4"], {"times": [80, 2.4]}, (80, 2.4, 0.002)),
        (
            ["--sampler", "ancestral", "--steps", "80,2.4,0.002"],
            {"times": [80, 2.4, 0.002]},
            (80, 2.4, 0.002),
        ),
        (["--sampler", "ancestral", "--steps", "80"], {"times": [80]}, (80, 0.002)),
    ],
)
def test_cli_and_spec_give_the_same_ancestral_schedule_ending_at_eps(flags, keys, times):
    # acea26b: the spec's {sampler: ancestral, times: [80, 2.4]} ended at a noisy 2.4
    cli, spec = _cli("bcm", *flags), _spec("bcm", sampler="ancestral", **keys)
    assert cli == spec
    assert cli.times == pytest.approx(times)


def test_cli_and_spec_give_the_same_heun_schedule():
    # acea26b: heun without times: a 19-point Karras grid on the CLI, one 80 -> eps step in a spec
    cli, spec = _cli("edm"), _spec("edm", sampler="heun")
    assert cli == spec and len(cli.times) == 19 and cli.times[0] == 80 and cli.times[-1] == 0
    assert cli.times[-2] == pytest.approx(0.002)
    assert cli == build("heun").for_model(Sigmas) == RECIPES["edm-18"].for_model(Sigmas)
    grid7 = _cli("edm", "--num-steps", "7")
    assert grid7 == _spec("edm", sampler="heun", steps=7) and len(grid7.times) == 8
    timed = _cli("edm", "--steps", "80,10,1")
    assert timed == _spec("edm", sampler="heun", times=[80, 10, 1])
    assert timed.times == (80, 10, 1, 0.0)  # EDM's final step to 0, not a noisy 1


def test_builder_errors_name_the_flag_or_key():
    with pytest.raises(UserError, match="--steps: sampler ancestral needs time steps"):
        _cli("bcm", "--sampler", "ancestral")
    with pytest.raises(ConfigError, match="s: times: sampler ancestral needs time steps"):
        _spec("bcm", sampler="ancestral")
    with pytest.raises(UserError, match="--num-steps: igct takes 1 or 2"):
        _cli("igct", "--num-steps", "18")
    with pytest.raises(UserError, match="runs on kind edm, not on this 'bcm' model"):
        _cli("bcm", "--sampler", "heun")
    with pytest.raises(UserError, match="--zigzag: sampler zigzag needs zigzag rounds"):
        _cli("bcm", "--sampler", "zigzag")
    with pytest.raises(UserError, match="sampler onestep takes no times"):
        _cli("bcm", "--sampler", "onestep", "--steps", "80,1")
