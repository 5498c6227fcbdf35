"""`bcm import --format openai-cm`: openai/consistency_models nets reproduce their own outputs.

Fixtures (tests/data/openai_cm/README.md): two tiny nets written by their code (at e32b69e) with
random weights through their fp16 trainer's save path, and the outputs of their own
`KarrasDenoiser.denoise` on 8 fixed (x, sigma, y) rows, with the CM boundary scalings
(`distillation=True`, how their sampler evaluates cd_* / ct_* files) and the EDM ones (their EDM
teacher). `released_shapes.json`: key -> shape of the released ImageNet-64 and LSUN-256 nets.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bcmcore import param
from bcmcore.config import UserError, from_dict
from bcmcore.imports import import_checkpoint, import_model
from bcmcore.imports.openai_cm import infer_model_config
from bcmcore.nets import ModelConfig, build_model, load_network

DIR = Path(__file__).parent / "data" / "openai_cm"
FILES = {"imagenet": DIR / "cd_imagenet64_tiny.pt", "lsun": DIR / "ct_bedroom256_tiny.pt"}
TINY = {"resolution": 16, "head_channels": 16}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cases():
    return torch.load(DIR / "cases.pt", weights_only=True)


@pytest.mark.parametrize("name", ["imagenet", "lsun"])
@pytest.mark.parametrize("kind", ["cm", "edm"])
def test_openai_cm_reproduces_their_outputs(name, kind, cases, tmp_path, one_thread):
    out = tmp_path / "net.pt"
    import_checkpoint("openai-cm", FILES[name], out, kind=kind, **TINY)
    model, meta = load_network(out)  # through the standard network file
    assert meta["kind"] == kind and meta["config"]["import"]["format"] == "openai-cm"
    assert model.net.cfg.adagn == (name == "imagenet")  # ImageNet-64 AdaGN, LSUN-256 not
    x, s, y = cases[f"{name}_x"], cases[f"{name}_sigma"], cases.get(f"{name}_y")
    assert torch.equal(1000 * param.c_noise(s), cases[f"{name}_t_in"])  # their 250 ln(sigma)
    with torch.no_grad():
        F = model.net(param.append_dims(param.c_in(s), 4) * x, param.c_noise(s), None, y)
        f = model(x, s, y=y)
    ref, other = cases[f"{name}_{kind}"], cases[f"{name}_{'edm' if kind == 'cm' else 'cm'}"]
    c_skip, c_out = (param.cm_scalings if kind == "cm" else param.edm_scalings)(s)
    bound = 1e-5 * (1 + c_skip.abs() + c_out.abs())
    err = (f - ref).abs().amax((1, 2, 3))
    assert (F - cases[f"{name}_F"]).abs().max() <= 1e-5
    assert (err <= bound).all(), err
    # the other preconditioning is far outside the bound: the kind is really tested
    assert ((other - ref).abs().amax((1, 2, 3)) > 100 * bound).any()
    if kind == "cm":  # CM boundary condition: f(x, sigma_min) = x (CM paper Eq. 3 / App. C)
        assert s[0] == torch.tensor(0.002) and torch.equal(f[0], x[0]) and torch.equal(ref[0], x[0])
    # their non-flash CPU path (QKVAttentionLegacy) casts q, k, v to fp16: 3.5e-4 on these rows
    assert (f - cases[f"{name}_{kind}_legacy"]).abs().max() <= 1e-3


@pytest.mark.parametrize(
    "net,kind", [("imagenet64", "cm"), ("imagenet64", "edm"), ("lsun256", "cm")]
)
def test_released_layouts_map_onto_adm(net, kind):
    """Every key of the released net (their create_model with their launch flags) maps to a project
    ADM parameter of the same shape, with nothing left over; the resolution follows the widths."""
    ref = json.loads((DIR / "released_shapes.json").read_text())[net]
    sd = {k: torch.empty(shape, device="meta") for k, shape in ref["state_dict_shapes"]}
    name = {"imagenet64": f"{'cd' if kind == 'cm' else 'edm'}_imagenet64_l2.pt"}.get(
        net, "ct_bedroom256.pt"
    )
    cfg = infer_model_config(sd, name)
    assert cfg["kind"] == kind
    n = cfg["net"]
    if net == "imagenet64":
        assert (n["resolution"], n["ch_mult"], n["num_blocks"], n["num_classes"]) == (
            64,
            [1, 2, 3, 4],
            3,
            1000,
        )
        assert n["adagn"] and n["dropout"] == (0.1 if kind == "edm" else 0.0)
    else:
        assert (n["resolution"], n["ch_mult"], n["num_blocks"], n["num_classes"]) == (
            256,
            [1, 1, 2, 2, 4, 4],
            2,
            0,
        )
        assert not n["adagn"]
    assert n["attn_res"] == [32, 16, 8] and not n["cosine_attention"]
    with torch.device("meta"):
        model = build_model(from_dict(ModelConfig, cfg, "model"))
    from bcmcore.imports.guided_diffusion import project_key

    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {f"net.{project_key(k)}": tuple(v.shape) for k, v in sd.items()}
    assert theirs == ours
    assert sum(v.numel() for v in model.state_dict().values()) == ref["params"]


def test_openai_cm_kind_and_resolution_errors(tmp_path):
    plain = tmp_path / "model.pt"
    plain.write_bytes(FILES["imagenet"].read_bytes())
    with pytest.raises(UserError, match="give --kind cm or --kind edm"):
        import_model("openai-cm", plain, **TINY)
    edm = tmp_path / "edm_imagenet64_ema.pt"
    edm.write_bytes(FILES["imagenet"].read_bytes())
    assert import_model("openai-cm", edm, **TINY)[0].cfg.kind == "edm"  # from the released name
    with pytest.raises(UserError, match="got --kind bcm"):
        import_model("openai-cm", FILES["imagenet"], kind="bcm", **TINY)
    with pytest.raises(UserError, match=r"\[1, 2\] are not a released layout.*--resolution"):
        import_model("openai-cm", FILES["imagenet"], head_channels=16)
    with pytest.raises(UserError, match="two-time .BCM. net.*bcm-ict-torch"):
        import_model("openai-cm", DIR.parent / "bcm_ict_torch/bcm/ema_0.99997_000000.pt", **TINY)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda sd: sd.__setitem__("middle_block.1.qkv.weight", torch.zeros(48, 64, 1, 1)),
            "shape mismatch for tensor 'middle_block.1.qkv.weight'",
        ),
        (
            lambda sd: sd.__setitem__("input_blocks.2.0.op.weight", torch.zeros(32, 32, 3, 3)),
            "tensor 'input_blocks.2.0.op.weight' has no counterpart",
        ),
        (lambda sd: sd.pop("out.2.bias"), "lacks tensors the project's ADM needs, e.g. 'net.conv_"),
        (
            lambda sd: sd.__setitem__("out.2.bias", sd["out.2.bias"].half()),
            "tensor 'out.2.bias' is torch.float16, expected float32",
        ),
        (lambda sd: sd.pop("time_embed.0.weight"), "no tensor 'time_embed.0.weight'"),
    ],
)
def test_openai_cm_bad_tensors_name_the_key(edit, message, tmp_path):
    sd = torch.load(FILES["imagenet"], weights_only=True)
    edit(sd)
    torch.save(sd, tmp_path / "cd_bad.pt")
    with pytest.raises(UserError, match=message):
        import_model("openai-cm", tmp_path / "cd_bad.pt", **TINY)


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_poisoned_state_dict_is_refused_unexecuted(tmp_path):
    """A torch.save file is a pickle: one carrying a call to os.system must be refused, unrun."""
    marker = tmp_path / "marker"
    sd = torch.load(FILES["lsun"], weights_only=True)
    sd["payload"] = _System(f"touch {marker}")
    bad = tmp_path / "ct_bedroom256.pt"
    torch.save(sd, bad)
    with pytest.raises(UserError, match="not an openai consistency_models checkpoint"):
        import_model("openai-cm", bad, **TINY)
    assert not marker.exists()
    # positive control: an ordinary (unrestricted) load runs the payload
    torch.load(bad, weights_only=False)
    assert marker.exists(), "the payload was not live: the test would prove nothing"


def test_bcm_import_cli_openai(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "bcmcore", "import", "--format", "openai-cm", *a],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    out = tmp_path / "net.pt"
    res = run(str(FILES["lsun"]), "--resolution", "16", "--head-channels", "16", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert load_network(out)[1]["kind"] == "cm"
    plain = tmp_path / "net_weights.pt"
    plain.write_bytes(FILES["lsun"].read_bytes())
    res = run(str(plain), "--resolution", "16", "--out", str(tmp_path / "x.pt"))
    assert res.returncode == 2 and "give --kind cm or --kind edm" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
