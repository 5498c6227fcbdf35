"""`bcm import`: the authors' checkpoints reproduce the authors' outputs (tests/data/*/cases.pt).

The fixtures were written by the authors' code (BCM-iCT-torch at 74ad31f, iGCT at 8ead6d1) at small
width with every tensor randomised, together with the outputs of the authors' own evaluation
(tests/data/README.md). Tolerances are the fixtures' (fp32, CPU): raw output 1e-5; BCM / iCT f per
row 1e-5 (1 + |c_skip| + |c_out|); iGCT outputs 1e-4 + 1e-5 max|ref|.
"""

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bcmcore import param
from bcmcore.config import UserError
from bcmcore.editing import igct_edit
from bcmcore.imports import import_checkpoint, import_model
from bcmcore.nets import load_network
from bcmcore.recipes import get_recipe

DATA = Path(__file__).parent / "data"
BCM_DIR, IGCT_DIR = DATA / "bcm_ict_torch", DATA / "igct"
PKL = IGCT_DIR / "network-snapshot-000800.pkl"
STUB = b"# module source omitted from this fixture: a loader must never execute it"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bcm_cases():
    return torch.load(BCM_DIR / "cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def igct_cases():
    return torch.load(IGCT_DIR / "cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def igct_model():
    return import_model("igct-edm", PKL)[0]


def _bcm_file(name):
    return BCM_DIR / name / "ema_0.99997_000000.pt"


# ----------------------------------------------------------------------------------------------
# BCM-iCT-torch


@pytest.mark.parametrize("name,kind", [("ict", "cm"), ("bcm", "bcm")])
def test_bcm_ict_torch_reproduces_authors(name, kind, bcm_cases, tmp_path, one_thread):
    c = {k[len(name) + 1 :]: v for k, v in bcm_cases.items() if k.startswith(name + "_")}
    out = tmp_path / "net.pt"
    import_checkpoint("bcm-ict-torch", _bcm_file(name), out, resolution=32, head_channels=16)
    model, meta = load_network(out)  # through the standard network file
    assert meta["kind"] == kind and meta["config"]["import"]["format"] == "bcm-ict-torch"
    x, t, y, u = c["x"], c["t"], c["y"], c.get("u")
    # the authors' scalings and time inputs (250 ln t), to ~1 ulp
    if kind == "cm":
        c_skip, c_out = param.cm_scalings(t)
    else:
        c_skip, c_out = param.bcm_scalings(t, u)
    for ours, ref in [(c_skip, c["c_skip"]), (c_out, c["c_out"]), (param.c_in(t), c["c_in"])]:
        torch.testing.assert_close(ours, ref, rtol=2e-7, atol=1e-9)
    assert torch.equal(1000 * param.c_noise(t), c["t_in"])
    with torch.no_grad():
        c_u = None if u is None else param.c_noise(u)
        F = model.net(param.append_dims(param.c_in(t), 4) * x, param.c_noise(t), c_u, y)
        f = model(x, t, u, y)
    assert (F - c["F"]).abs().max() <= 1e-5
    bound = 1e-5 * (1 + c["c_skip"].abs() + c["c_out"].abs())
    assert ((f - c["f"]).abs().amax((1, 2, 3)) <= bound).all(), (f - c["f"]).abs().amax((1, 2, 3))
    if kind == "bcm":  # the inversion rows (u > t) are among them
        assert (u > t).sum() >= 4


def test_bcm_ict_torch_keeps_fp32_master_weights_bitwise(tmp_path):
    sd = torch.load(_bcm_file("bcm"), weights_only=True)
    out = tmp_path / "net.pt"
    import_checkpoint("bcm-ict-torch", _bcm_file("bcm"), out, resolution=32, head_channels=16)
    state = torch.load(out, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values())
    assert torch.equal(state["net.down.2.1.qkv.weight"], sd["input_blocks.3.1.qkv.weight"])
    assert torch.equal(state["net.time_embed.align.weight"], sd["time_embed_align.weight"])
    assert len(state) == len(sd) == 150


def test_bcm_ict_torch_errors(tmp_path):
    with pytest.raises(UserError, match="--kind cm given, but the file holds a BCM net"):
        import_model("bcm-ict-torch", _bcm_file("bcm"), kind="cm", resolution=32, head_channels=16)
    sd = torch.load(_bcm_file("ict"), weights_only=True)
    sd["middle_block.0.emb_layers.1.weight"] = torch.zeros(64, 100)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(
        UserError, match="shape mismatch for tensor 'middle_block.0.emb_layers.1.weight'"
    ):
        import_model("bcm-ict-torch", tmp_path / "bad.pt", resolution=32, head_channels=16)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a BCM-iCT-torch checkpoint"):
        import_model("bcm-ict-torch", tmp_path / "text.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no tensor 'time_embed.0.weight'"):
        import_model("bcm-ict-torch", tmp_path / "other.pt")
    with pytest.raises(UserError, match="unknown checkpoint format 'edm2'"):
        import_model("edm2", _bcm_file("ict"))


def test_clsloc_labels_permute_class_embedding(tmp_path):
    """npz label k (map_clsloc id k+1) must embed as the authors' sorted-WNID label of the same
    wnid."""
    wnids = [f"n{9 - i:08d}" for i in range(10)]  # clsloc order = reversed sorted order here
    (tmp_path / "map_clsloc.txt").write_text(
        "".join(f"{w} {i + 1} c{i}\n" for i, w in enumerate(wnids))
    )
    a = import_model("bcm-ict-torch", _bcm_file("ict"), resolution=32, head_channels=16)[0]
    b = import_model(
        "bcm-ict-torch",
        _bcm_file("ict"),
        resolution=32,
        head_channels=16,
        clsloc_labels=tmp_path / "map_clsloc.txt",
    )[0]
    Ea, Eb = a.net.cond.label.weight, b.net.cond.label.weight
    assert torch.equal(Eb[0], Ea[9]) and torch.equal(Eb[9], Ea[0]) and not torch.equal(Eb, Ea)


# ----------------------------------------------------------------------------------------------
# iGCT (EDM pickle)


def _close(ours, ref):
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4 + 1e-5 * ref.abs().max().item(), err
    return err


def test_igct_noiser_and_denoiser_at_several_w(igct_model, igct_cases, one_thread):
    c, m = igct_cases, igct_model
    assert m.cfg.noiser_rule == "authors-eval" and len(set(c["w_paper"].tolist())) >= 6
    x, s, y, w = c["x_t"], c["sigma"], c["labels"], c["w_paper"]
    with torch.no_grad():
        _close(m.noiser(x, s, y), c["noiser_out"])
        _close(m.denoiser(x, s, y, w), c["denoiser_out"])
        x_in = param.append_dims(param.c_in(s), 4) * x
        _close(m.noiser_net(x_in, param.c_noise(s), y=y), c["noiser_F"])
        _close(m.denoiser_net(x_in, param.c_noise(s), y=y, w=w), c["denoiser_F"])
        # an all-zero one-hot row embeds to the bias alone: our null label (-1)
        _close(m.denoiser(x, s, torch.full_like(y, -1), w), c["denoiser_out_zero_label"])
    # the project's own rule (N = x + (T - t) F) is the authors' train-mode rule
    m2 = import_model("igct-edm", PKL)[0]
    m2.noiser_rule = "boundary"
    with torch.no_grad():
        _close(m2.noiser(x, s, y), c["noiser_out_train_rule"])


def test_igct_guidance_embedding_is_the_authors(igct_cases):
    from bcmcore.nets.embedding import guidance_features

    # e(w) = [sin | cos](1000 (w - 1) phi_k) (docs/methods.md §12.4), checked two ways: against
    # float64 sin/cos of our own fp32 arguments (sin first, the 1000 scale and the w - 1 shift; a
    # swap or a missing shift moves entries by O(1)), and against the authors' recorded e(w). The
    # recording machine's fp32 sin/cos are off by up to ~1e-3 at arguments of ~1e4 rad (its
    # values differ from float64 sin of any fp32 rounding of the argument), so that bound is 2e-3.
    w = igct_cases["w_paper"]
    got = guidance_features(w)
    phi = torch.exp(torch.arange(128, dtype=torch.float32) * -(math.log(1e4) / 127))
    a = ((1000.0 * (w.float() - 1.0))[:, None] * phi[None]).double()
    exact = torch.cat([a.sin(), a.cos()], dim=1)
    assert (got.double() - exact).abs().max() < 1e-6
    assert (got - igct_cases["w_embeds"]).abs().max() < 2e-3


def test_igct_one_step_and_two_step_generation(igct_model, igct_cases, one_thread):
    c, m, T = igct_cases, igct_model, igct_model.sigma_max
    y, w = c["gen_labels"], float(c["gen_w_paper"])
    with torch.no_grad():
        x1 = m.denoiser(T * c["gen_z"], T, y, w).clamp(-1, 1)
        t_mid = float(c["gen_2step_mid_t"])
        x2 = m.denoiser(x1 + t_mid * c["gen_2step_noise"], t_mid, y, w).clamp(-1, 1)
    _close(x1, c["gen_1step"])
    _close(x2, c["gen_2step"])


def test_igct_class_edit_and_reconstruction(igct_model, igct_cases, one_thread):
    c, m = igct_cases, igct_model
    x = c["edit_x"]
    with torch.no_grad():
        lat = m.noiser(x, m.sigma_min, c["edit_src"])
        edit, nfe = igct_edit(m, x, c["edit_src"], c["edit_tar"], float(c["edit_w_paper"]))
        recon, _ = igct_edit(m, x, c["edit_src"], c["edit_src"], float(c["recon_w_paper"]))
    assert nfe == 2
    _close(lat, c["edit_latent"])
    _close(edit, c["edit_out"])
    _close(recon, c["recon_out"])


def test_igct_file_round_trip_and_errors(tmp_path, igct_cases):
    out = tmp_path / "igct.pt"
    import_checkpoint("igct-edm", PKL, out)
    model, meta = load_network(out)
    assert meta["kind"] == "igct" and meta["model_config"].noiser_rule == "authors-eval"
    assert meta["step"] == 800
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="junk.pkl"):
        import_model("igct-edm", tmp_path / "junk.pkl")
    with pytest.raises(UserError, match="not found"):
        import_model("igct-edm", tmp_path / "missing.pkl")


# ----------------------------------------------------------------------------------------------
# never execute


def _with_payload(tmp_path, marker):
    """A copy of the snapshot whose embedded module source, if executed, would create `marker`."""
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('executed')\n".encode()
    blob = PKL.read_bytes()
    old = blob[blob.index(STUB) - 5 : blob.index(STUB) + len(STUB) + 1]
    assert old[:1] == b"X"  # BINUNICODE + 4-byte length
    n = int.from_bytes(old[1:5], "little")
    old = old[: 5 + n]
    new = b"X" + len(code).to_bytes(4, "little") + code
    path = tmp_path / "payload.pkl"
    path.write_bytes(blob.replace(old, new))
    return path


def test_embedded_source_is_never_executed(tmp_path):
    marker = tmp_path / "marker"
    bad = _with_payload(tmp_path, marker)
    model, _ = import_model("igct-edm", bad)  # imports, identical weights
    ref, _ = import_model("igct-edm", PKL)
    assert not marker.exists()
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values())
    )
    assert not any(m.startswith("torch_utils") for m in sys.modules)
    # positive control: a loader that does what torch_utils.persistence does (exec module_src) runs
    # it
    fake = tmp_path / "fake" / "torch_utils"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "persistence.py").write_text(
        "def _reconstruct_persistent_obj(meta):\n"
        "    exec(meta['module_src'], {})\n"
        "    return meta\n"
    )
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    code = (
        f"import pickle\ntry:\n    pickle.load(open({str(bad)!r}, 'rb'))\n"
        "except Exception:\n    pass\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert marker.exists(), "the payload was not live: the test would prove nothing"


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_other_globals_are_refused_by_name(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _System(f"touch {marker}")}, protocol=4))
    with pytest.raises(UserError, match=r"refused global '(posix|os|nt)\.system'"):
        import_model("igct-edm", path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"ema": [exec]}, protocol=4))
    with pytest.raises(UserError, match="refused global 'builtins.exec'"):
        import_model("igct-edm", path)


def test_bcm_import_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "net.pt"
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "bcmcore", "import", *a],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    res = run("--format", "igct-edm", str(PKL), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert load_network(out)[1]["kind"] == "igct"
    res = run("--format", "nope", str(PKL), "--out", str(tmp_path / "x.pt"))
    assert res.returncode == 2 and "unknown checkpoint format 'nope'" in res.stderr
    assert not (tmp_path / "x.pt").exists()
    # --out *.safetensors: the same network in the safetensors container, tensors bit for bit
    st = tmp_path / "net.safetensors"
    res = run("--format", "igct-edm", str(PKL), "--out", str(st))
    assert res.returncode == 0 and st.read_bytes()[8:9] == b"{", res.stderr
    (a, meta_a), (b, meta_b) = load_network(out), load_network(st)
    assert meta_a["config"] == meta_b["config"] and meta_b["config"]["import"]["sha256"]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    res = run("--format", "igct-edm", str(PKL), "--out", str(tmp_path / "x.pth"))
    assert res.returncode == 2 and "ending in .pt or .safetensors" in res.stderr, res.stderr
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize(
    "recipe,kind,calls",
    [  # the authors' sampling scripts (tests/data/README.md): (t, u) of every network call
        ("imagenet64-nfe1", "bcm", [(80, 0.002)]),
        ("imagenet64-nfe2", "bcm", [(80, 2.4), (2.4, 0.002)]),
        ("imagenet64-nfe3", "bcm", [(80, 0.002), (0.1, 1.2), (1.2, 0.002)]),
        ("imagenet64-nfe4", "bcm", [(80, 3.0), (3.0, 0.002), (0.12, 0.4), (0.4, 0.002)]),
        ("imagenet64-ict-nfe2", "cm", [(80, None), (0.7, None)]),
    ],
)
def test_imagenet64_recipes_are_the_authors_schedules(recipe, kind, calls):
    from bcmcore import sampling

    name = "bcm" if kind == "bcm" else "ict"
    model = import_model("bcm-ict-torch", _bcm_file(name), resolution=32, head_channels=16)[0]
    seen, forward = [], model.forward

    def record(x, t, u=None, y=None):
        if u is None and kind == "bcm":
            u = torch.full_like(t, 0.002)  # BCM: u omitted means sigma_min, as in the authors' code
        seen.append((round(float(t[0]), 6), None if u is None else round(float(u[0]), 6)))
        return forward(x, t, u, y)

    model.forward = record
    rng = sampling.SeededRNG(range(2))
    sampling.generate(model, get_recipe(recipe), rng.randn((3, 32, 32)), rng, torch.tensor([1, 2]))
    assert seen == [(t, u) for t, u in calls]
