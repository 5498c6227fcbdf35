"""Networks and preconditioning: boundary conditions, identity-zero fine-tuning init, embeddings,
file I/O."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from bcmcore import param
from bcmcore.config import ConfigError, UserError, from_dict, to_dict
from bcmcore.nets import (
    ConsistencyModel,
    EDMDenoiser,
    ModelConfig,
    NetConfig,
    bcm_from_cm,
    build_model,
    build_net,
    load_network,
    save_network,
)
from bcmcore.nets.embedding import PositionalFeatures, guidance_features

EPS, T = param.SIGMA_MIN, param.SIGMA_MAX

# tiny versions of the three archs (same code paths as the full-size ones)
TINY = {
    "mlp": NetConfig(arch="mlp", data_channels=2, channels=32, num_blocks=2, num_classes=3),
    "ncsnpp": NetConfig(
        arch="ncsnpp",
        channels=16,
        ch_mult=(1, 2),
        num_blocks=1,
        resolution=8,
        attn_res=(4,),
        num_classes=3,
        dropout=0.1,
    ),
    "adm": NetConfig(
        arch="adm",
        channels=32,
        ch_mult=(1, 2),
        num_blocks=1,
        resolution=8,
        attn_res=(4,),
        head_channels=16,
        num_classes=3,
        dropout=0.1,
        dropout_max_res=4,
    ),
}


def x_for(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (
        (b, cfg.data_channels)
        if cfg.arch == "mlp"
        else (b, cfg.data_channels, cfg.resolution, cfg.resolution)
    )
    return torch.randn(shape, generator=g)


def log_uniform(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(torch.empty(b).uniform_(math.log(EPS), math.log(T), generator=g))


@torch.no_grad()
def randomise(module, seed=0):
    """Random non-zero weights everywhere (zero-initialised output layers would make comparisons
    vacuous)."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def model(kind, arch="mlp", **net):
    cfg = dataclasses.replace(TINY[arch], two_time=kind == "bcm", **net)
    return randomise(build_model(ModelConfig(kind=kind, net=cfg))).eval()


# ----------------------------------------------------------------------------------------------
# boundary


@pytest.mark.parametrize("arch", ["mlp", "ncsnpp"])
@pytest.mark.parametrize("embed", ["concat", "project"])
def test_bcm_identity_at_t_equals_u_bitwise(arch, embed):
    m = model("bcm", arch, two_time_embed=embed)
    x = x_for(m.cfg.net, b=8) * 40
    t = log_uniform(8)
    y = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1])
    assert torch.equal(m(x, t, t, y), x)  # f(x, t, t) = x exactly (BCM Eq. 45)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, t, t, y)
    assert out.dtype == torch.float32 and torch.equal(out, x)
    assert not torch.allclose(m(x, t, t * 1.5, y), x)  # ... and not the identity elsewhere


def test_cm_boundary_and_u_restriction():
    m = model("cm")
    x = x_for(m.cfg.net) * 3
    assert torch.equal(m(x, EPS), x)  # f(x, sigma_min) = x (CM App. C)
    assert torch.equal(m(x, torch.full((4,), EPS), u=EPS), x)
    with pytest.raises(ValueError, match="sigma_min"):
        m(x, 1.0, u=0.5)


def test_combination_in_fp32_under_autocast():
    """Long inverse jump (|c_out| ~ 79): the result is c_skip x + c_out F evaluated in fp32, F from
    autocast."""
    m = model("bcm", "ncsnpp")
    x = x_for(m.cfg.net)
    t, u = torch.full((4,), 0.07), torch.full((4,), T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, t, u)
        F = m.net(param.append_dims(param.c_in(t), 4) * x, param.c_noise(t), param.c_noise(u))
    assert F.dtype == torch.bfloat16 and out.dtype == torch.float32
    c_skip, c_out = param.bcm_scalings(t, u)
    assert torch.equal(
        out, c_skip[:, None, None, None] * x + c_out[:, None, None, None] * F.float()
    )


def test_c_out_sign_in_model():
    """f(x, t, u) - c_skip x = c_out F changes sign with (t - u): negative c_out when inverting (u >
    t)."""
    m = model("bcm")
    x, t = x_for(m.cfg.net), torch.full((4,), 1.0)
    F = m.net(param.c_in(t)[:, None] * x, param.c_noise(t), param.c_noise(torch.full((4,), 2.0)))
    c_skip, c_out = param.bcm_scalings(t, torch.full((4,), 2.0))
    assert bool((c_out < 0).all())
    torch.testing.assert_close(m(x, t, 2.0), c_skip[:, None] * x + c_out[:, None] * F)


def test_edm_denoiser_matches_table1():
    m = randomise(build_model(ModelConfig(kind="edm", net=TINY["mlp"]))).eval()
    assert isinstance(m, EDMDenoiser)
    x, s = x_for(m.cfg.net), log_uniform(4)
    c_skip = 0.25 / (s**2 + 0.25)
    c_out = s * 0.5 / torch.sqrt(s**2 + 0.25)
    F = m.net(x / torch.sqrt(s**2 + 0.25)[:, None], 0.25 * s.log())
    torch.testing.assert_close(m(x, s), c_skip[:, None] * x + c_out[:, None] * F)


# ----------------------------------------------------------------------------------------------
# fine-tuning init


@pytest.mark.parametrize("arch", ["mlp", "ncsnpp", "adm"])
def test_bcm_from_cm_reproduces_cm_for_every_u(arch):
    cm = model("cm", arch)
    bcm = bcm_from_cm(cm)
    assert (
        isinstance(bcm, ConsistencyModel)
        and bcm.kind == "bcm"
        and bcm.cfg.net.time_embed == "project"
    )
    te = bcm.net.time_embed
    d = te.align.out_features
    assert te.align.bias is None
    assert torch.equal(
        te.align.weight, torch.cat([torch.eye(d), torch.zeros(d, d)], dim=1)
    )  # [I | 0]
    x, t = x_for(cm.cfg.net) * 2, log_uniform(4)
    y = torch.tensor([0, 2, -1, 1])
    c_t = param.c_noise(t)
    with torch.no_grad():
        F_cm = cm.net(x, c_t, y=y)
        assert F_cm.abs().mean() > 1e-2  # non-trivial output
        for u in (EPS, 0.3, 5.0, T):
            F_bcm = bcm.net(x, c_t, param.c_noise(torch.full((4,), u)), y=y)
            assert (F_bcm - F_cm).abs().max().item() <= 1e-6
        # preconditioned output at u = sigma_min: equal up to the O(eps) c_skip difference (BCM App.
        # D)
        f_cm, f_bcm = cm(x, t, y=y), bcm(x, t, EPS, y=y)
        dc = (param.bcm_scalings(t, EPS)[0] - param.cm_scalings(t)[0]).abs()
        assert bool((dc <= 0.6 * EPS).all())
        bound = param.append_dims(dc, x.ndim) * x.abs() + 1e-5
        assert bool(((f_bcm - f_cm).abs() <= bound).all())
        assert (f_bcm - f_cm).abs().max() > 0  # the skip terms do differ


def test_bcm_from_cm_untied_and_shared_weights_copied():
    cm = model("cm", "adm")
    bcm = bcm_from_cm(cm)
    te = bcm.net.time_embed
    for (k, a), b in zip(te.mlp_t.state_dict().items(), te.mlp_u.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), k  # a copy, not the same storage
    sd_cm = cm.state_dict()
    for k, v in bcm.state_dict().items():
        if not k.startswith(("net.time_embed.mlp_u", "net.time_embed.align")):
            assert torch.equal(v, sd_cm[k]), k
    with torch.no_grad():
        te.mlp_u[0].weight.add_(1.0)
    assert not torch.equal(te.mlp_u[0].weight, te.mlp_t[0].weight)
    assert bcm_from_cm(cm.net).time_embed.mode == "project"  # raw net in -> raw net out
    with pytest.raises(ValueError):
        bcm_from_cm(bcm)


@pytest.mark.parametrize("embed", ["concat", "project"])
def test_gradients_reach_the_u_branch(embed):
    m = model("bcm", "mlp", two_time_embed=embed).train()
    if embed == "project":
        m = bcm_from_cm(model("cm", "mlp")).train()
    x, t = x_for(m.cfg.net), log_uniform(4)
    u = torch.tensor([0.1, 1.0, 10.0, 70.0])
    loss = m(x, t, u).square().mean()
    loss.backward()
    te = m.net.time_embed
    if embed == "project":
        d = te.align.out_features
        assert te.align.weight.grad[:, d:].abs().sum() > 0  # u columns of [I | 0] get a gradient
        # at [I | 0] dL/de_u = 0: mlp_u only learns once the u columns move; one SGD step shows it
        # does
        torch.optim.SGD(m.parameters(), lr=0.1).step()
        m.zero_grad()
        m(x, t, u).square().mean().backward()
        assert te.mlp_u[0].weight.grad.abs().sum() > 0
    else:
        w0 = te.mlp_t[0].weight.grad
        assert w0[:, w0.shape[1] // 2 :].abs().sum() > 0  # columns reading the u features
    with torch.no_grad():  # and the output now depends on u
        assert not torch.allclose(m.eval()(x, t, 0.5), m(x, t, 5.0))


# ----------------------------------------------------------------------------------------------
# embeddings, layers


def test_adm_positional_embedding_is_250_ln_t():
    t = torch.tensor([EPS, 0.5, T])
    e = PositionalFeatures(192)(param.c_noise(t)).double()
    k = torch.arange(96, dtype=torch.float64)
    a = 250 * torch.log(t.double())[:, None] * torch.exp(-math.log(10000) * k / 96)[None]
    torch.testing.assert_close(e, torch.cat([a.cos(), a.sin()], 1), atol=2e-3, rtol=0)


def test_guidance_features_and_null_label():
    e = guidance_features(torch.tensor([1.0]))
    assert torch.equal(
        e, torch.cat([torch.zeros(1, 128), torch.ones(1, 128)], 1)
    )  # w = 1 (docs/methods.md §12.4)
    m = randomise(build_net(dataclasses.replace(TINY["mlp"], guidance=True))).eval()
    x, c = x_for(m.cfg), param.c_noise(log_uniform(4))
    null = torch.full((4,), -1)
    assert torch.equal(m(x, c, y=null, w=2.0), m(x, c, y=None, w=2.0))  # -1 = null class = no label
    assert not torch.allclose(
        m(x, c, y=torch.zeros(4, dtype=torch.long), w=2.0), m(x, c, y=null, w=2.0)
    )
    assert not torch.allclose(m(x, c, y=null, w=1.0), m(x, c, y=null, w=3.0))
    with pytest.raises(ValueError, match="needs w"):
        m(x, c, y=null)


def test_cosine_attention_is_scale_invariant():
    """ADM's q/k/v RMS normalisation (docs/methods.md §12.2) makes attention invariant to scaling q,
    k, v."""
    from bcmcore.nets.layers import Attention

    x = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    for style, invariant in (("adm", True), ("ncsnpp", False)):
        a = randomise(Attention(32, style, head_channels=16))
        with torch.no_grad():
            y0 = a(x)
            a.qkv.weight.mul_(7.0)
            a.qkv.bias.mul_(7.0)
            err = (a(x) - y0).abs().max().item()
        assert (err < 3e-3) if invariant else (err > 0.1), (style, err)  # up to the 1e-4 in the RMS


def _upfirdn2d_ref(x, up, down, pad0, pad1, gain):
    """Direct definition of upfirdn2d with the [1,3,3,1] kernel: zero-insert, pad, 2-D convolution,
    decimate."""
    import numpy as np
    from scipy.signal import convolve2d

    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float64)
    k = k / k.sum() * gain
    out = []
    for img in x.reshape(-1, *x.shape[-2:]).double().numpy():
        z = np.zeros((img.shape[0] * up, img.shape[1] * up))
        z[::up, ::up] = img
        z = np.pad(z, ((pad0, pad1), (pad0, pad1)))
        out.append(convolve2d(z, k, mode="valid")[::down, ::down])
    return torch.tensor(np.stack(out)).reshape(*x.shape[:-2], *out[0].shape)


def test_fir_resampling_matches_upfirdn2d():
    from bcmcore.nets.layers import fir_down, fir_up

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(fir_down(x), _upfirdn2d_ref(x, 1, 2, 1, 1, 1.0))
    torch.testing.assert_close(fir_up(x), _upfirdn2d_ref(x, 2, 1, 2, 1, 4.0))
    c = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    assert (
        torch.allclose(fir_up(c)[..., 2:-2, 2:-2], c.new_ones(1))
        and fir_down(c)[..., 1:-1, 1:-1].eq(1).all()
    )


def test_adm_dropout_only_at_low_resolution():
    from bcmcore.nets.layers import ResBlock

    cfg = NetConfig(
        arch="adm",
        channels=32,
        ch_mult=(1, 1, 1),
        num_blocks=1,
        resolution=16,
        attn_res=(),
        head_channels=16,
        dropout=0.2,
        dropout_max_res=8,
    )
    net = build_net(cfg)
    ps = {round(b.drop.p, 3) for b in net.modules() if isinstance(b, ResBlock)}
    assert ps == {0.0, 0.2}
    assert all(
        b.drop.p == 0 for b in net.down[0].modules() if isinstance(b, ResBlock)
    )  # 16x16: none
    assert all(b.drop.p == 0.2 for b in net.mid.modules() if isinstance(b, ResBlock))


@pytest.mark.parametrize("arch", ["ncsnpp", "adm"])
def test_image_nets_shapes_and_two_time_modes(arch):
    for embed in ("concat", "project"):
        net = build_net(dataclasses.replace(TINY[arch], two_time=True, two_time_embed=embed))
        x, c = x_for(net.cfg), param.c_noise(log_uniform(4))
        assert net(x, c, c * 0.5, y=torch.tensor([0, 1, 2, -1])).shape == x.shape
        with pytest.raises(ValueError, match="c_u"):
            net(x, c)


def test_adagn_is_scale_shift_of_the_normalised_features():
    """AdaGN (ADM use_scale_shift_norm, EDM adaptive_scale): GN(h) (1 + scale) + shift, with
    (scale, shift) = the two halves of Dense(act(emb)) in that order; without it emb is added before
    the norm."""
    import torch.nn.functional as F

    from bcmcore.nets.layers import ResBlock

    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(2, 32, 4, 4, generator=g), torch.randn(2, 24, generator=g)
    for adagn in (True, False):
        b = randomise(ResBlock(32, 64, 24, 0.0, "adm", adagn=adagn)).eval()
        assert b.emb.out_features == (128 if adagn else 64)
        h = b.conv0(F.silu(b.norm0(x)))
        e = b.emb(F.silu(emb))[:, :, None, None]
        if adagn:
            scale, shift = e[:, :64], e[:, 64:]
            h = b.norm1(h) * (1 + scale) + shift
        else:
            h = b.norm1(h + e)
        ref = b.skip(x) + b.conv1(F.silu(h))
        torch.testing.assert_close(b(x, emb), ref)


# EDM's DhariwalUNet at a tiny size (128 channels so that both nets' GroupNorms have 32 groups)
EDM_ADM_TINY = NetConfig(
    arch="adm",
    resolution=8,
    channels=128,
    ch_mult=(1, 1),
    num_blocks=1,
    attn_res=(4,),
    head_channels=64,
    num_classes=10,
    adagn=True,
    cosine_attention=False,
    positional_scale=1.0,
)


# score-SDE's bedroom NCSN++ layout (input_skip, output_skip, Fourier scale 16) at a tiny size
SCORESDE_TINY = NetConfig(
    arch="ncsnpp",
    resolution=16,
    channels=16,
    ch_mult=(1, 2, 2),
    num_blocks=1,
    attn_res=(8,),
    progressive_input="input_skip",
    progressive="output_skip",
    fourier_scale=16.0,
)


@torch.no_grad()
def fixture_weights(module, seed=0):
    """Seeded weights for the authors'-code fixtures: matrices and kernels N(0, 1/fan_in), norm
    scales 1 + 0.2 N(0, 1), other 1-D parameters 0.1 N(0, 1) (nothing left at its zero init), and
    the fixed Fourier frequencies N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    for name, b in module.named_buffers():
        if name.endswith("feat.W"):
            b.copy_(torch.randn(b.shape, generator=g))
    for name, p in module.named_parameters():
        z = torch.randn(p.shape, generator=g)
        if p.ndim >= 2:
            p.copy_(z / math.sqrt(p[0].numel()))
        else:
            p.copy_(1 + 0.2 * z if "norm" in name and name.endswith("weight") else 0.1 * z)
    return module


def test_edm_adm_variant_matches_edms_dhariwal_unet():
    """adagn + plain attention + positional_scale 1 is EDM's DhariwalUNet (iGCT's ImageNet nets):
    tests/data/edm_adm_tiny.pt holds EDM's own forward on these weights (see tests/data/README.md).
    Turning AdaGN off or the q/k/v normalisation on must break the match."""
    ref = torch.load(Path(__file__).parent / "data/edm_adm_tiny.pt", weights_only=True)
    net = fixture_weights(build_net(EDM_ADM_TINY)).eval()
    with torch.no_grad():
        out = net(ref["x"], ref["c_noise"], y=ref["y"])
        torch.testing.assert_close(out, ref["out"], atol=1e-4, rtol=1e-4)
        for wrong in (dict(cosine_attention=True), dict(positional_scale=1000.0)):
            other = fixture_weights(build_net(dataclasses.replace(EDM_ADM_TINY, **wrong))).eval()
            assert (other(ref["x"], ref["c_noise"], y=ref["y"]) - ref["out"]).abs().max() > 1e-2


def test_bedroom_ncsnpp_matches_score_sde():
    """input_skip + output_skip + Fourier features is score-SDE's bedroom NCSN++: tests/data/
    scoresde_ncsnpp_tiny.pt holds score-SDE's own forward on these weights (tests/data/README.md),
    fed log(sigma) as its continuous VE models are. The CIFAR-10 pyramids must not match it."""
    ref = torch.load(Path(__file__).parent / "data/scoresde_ncsnpp_tiny.pt", weights_only=True)
    net = fixture_weights(build_net(SCORESDE_TINY)).eval()
    with torch.no_grad():
        torch.testing.assert_close(net(ref["x"], ref["c_noise"]), ref["out"], atol=1e-5, rtol=1e-4)
        for wrong in (dict(progressive="none"), dict(progressive_input="residual")):
            other = fixture_weights(build_net(dataclasses.replace(SCORESDE_TINY, **wrong))).eval()
            assert (other(ref["x"], ref["c_noise"]) - ref["out"]).abs().max() > 1e-2


def test_ncsnpp_input_and_output_skip_pyramids():
    """score-SDE bedroom pyramids: the input pyramid is the FIR-downsampled image (1x1 conv, summed
    in at each lower level); the output is sum_l up^(L-1-l)(conv_l(act(GN(h_l)))) over the decoder
    levels l, lowest resolution first."""
    import torch.nn.functional as F

    from bcmcore.nets.layers import fir_down, fir_up

    cfg = dataclasses.replace(
        TINY["ncsnpp"],
        ch_mult=(1, 2, 2),
        resolution=16,
        progressive="output_skip",
        progressive_input="input_skip",
    )
    net = randomise(build_net(cfg)).eval()
    assert not hasattr(net, "conv_out") and len(net.skip_out) == 3
    x, c = x_for(cfg), param.c_noise(log_uniform(4))
    seen = {"in": [], "out": []}
    hooks = [m.register_forward_hook(lambda m, a, o: seen["in"].append(a[0])) for m in net.pyramid]
    hooks += [
        n.register_forward_hook(lambda m, a, o: seen["out"].append(a[0])) for n, _ in net.skip_out
    ]
    with torch.no_grad():
        out = net(x, c, y=torch.tensor([0, 1, 2, 0]))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(seen["in"][0], fir_down(x))
    torch.testing.assert_close(seen["in"][1], fir_down(fir_down(x)))
    ref = 0
    for level, h in enumerate(seen["out"]):  # level 0 = lowest resolution
        n, conv_l = net.skip_out[level]
        p = conv_l(F.silu(n(h)))
        for _ in range(len(seen["out"]) - 1 - level):
            p = fir_up(p)
        ref = ref + p
    torch.testing.assert_close(out, ref)
    with pytest.raises(ConfigError, match="progressive"):
        build_net(dataclasses.replace(TINY["adm"], progressive="output_skip"))
    with pytest.raises(ConfigError, match="adagn"):
        build_net(dataclasses.replace(TINY["ncsnpp"], adagn=True))


# ----------------------------------------------------------------------------------------------
# config, I/O


def test_config_validation():
    cfg = from_dict(
        ModelConfig, {"kind": "bcm", "net": {"arch": "ncsnpp", "ch_mult": [2, 2], "two_time": True}}
    )
    assert cfg.net.ch_mult == (2, 2) and from_dict(ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="model.net.two_time"):
        build_model(ModelConfig(kind="cm", net=dataclasses.replace(TINY["mlp"], two_time=True)))
    with pytest.raises(ConfigError, match="model.net.head_channels"):
        build_net(dataclasses.replace(TINY["adm"], head_channels=24))
    with pytest.raises(ConfigError, match="model.net.widht"):
        from_dict(ModelConfig, {"net": {"widht": 3}}, "model")


def test_save_load_round_trip_bitwise(tmp_path):
    m = model("bcm", "ncsnpp", two_time_embed="project")
    path = tmp_path / "network-final.pt"
    save_network(path, m, step=123, config={"seed": 7})
    m2, meta = load_network(path)
    assert (
        meta["step"] == 123
        and meta["config"] == {"seed": 7}
        and meta["kind"] == "bcm"
        and not m2.training
    )
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(
        torch.equal(sd[k], sd2[k]) for k in sd
    )  # incl. Fourier buffer
    x, t = x_for(m.cfg.net), log_uniform(4)
    assert torch.equal(m(x, t, 0.3), m2(x, t, 0.3))
    assert not list(tmp_path.glob(".tmp-*"))


def test_bad_network_files_raise_one_clear_error(tmp_path):
    m = model("cm")
    good = tmp_path / "network-final.pt"
    save_network(good, m, step=1, config={})
    data = good.read_bytes()
    bad = tmp_path / "network-truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="network-truncated.pt.*truncated"):
        load_network(bad)
    other = tmp_path / "training-state-1.pt"
    torch.save({"step": 1, "net": {}}, other)
    with pytest.raises(UserError, match="training-state-1.pt.*bcm-network/1"):
        load_network(other)
    with pytest.raises(UserError, match="missing.pt.*not found"):
        load_network(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------------------------
# parameter counts


def _count(cfg):
    return sum(p.numel() for p in build_net(cfg).parameters())


def test_ncsnpp_cifar10_parameter_counts():
    """docs/methods.md §12: NCSN++ CIFAR-10 CM 56.4M, BCM (concat, widened MLP) 61.9M (built for
    real on CPU)."""
    cfg = NetConfig(arch="ncsnpp", dropout=0.3)
    assert round(_count(cfg) / 1e6, 1) == 56.4
    assert round(_count(dataclasses.replace(cfg, two_time=True)) / 1e6, 1) == 61.9
    with torch.device("meta"):  # deep variants, 8 blocks per resolution: 97.6M / 106.3M
        deep = dataclasses.replace(cfg, num_blocks=8)
        assert round(_count(deep) / 1e6, 1) == 97.6
        assert round(_count(dataclasses.replace(deep, two_time=True)) / 1e6, 1) == 106.3


def test_adm_imagenet64_parameter_counts():
    """docs/methods.md §12: ADM no-32 iCT 278.0M, BCM (+u-MLP, W_align) 279.9M; with 32x32 attention
    282.2M (meta device)."""
    cfg = NetConfig(
        arch="adm",
        resolution=64,
        channels=192,
        ch_mult=(1, 2, 3, 4),
        num_blocks=3,
        attn_res=(16, 8),
        num_classes=1000,
        dropout=0.2,
        dropout_max_res=16,
    )
    bcm = dataclasses.replace(cfg, two_time=True, two_time_embed="project")
    with torch.device("meta"):
        assert round(_count(cfg) / 1e6, 1) == 278.0
        assert round(_count(bcm) / 1e6, 1) == 279.9
        assert round(_count(dataclasses.replace(cfg, attn_res=(32, 16, 8))) / 1e6, 1) == 282.2
        assert round(_count(dataclasses.replace(bcm, num_blocks=6)) / 1e6, 1) == 467.0


@pytest.mark.gpu
def test_cuda_bf16_boundary_and_finetune_init():
    m = model("bcm", "adm", two_time_embed="project").cuda()
    x, t = x_for(m.cfg.net).cuda() * 10, log_uniform(4).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(m(x, t, t), x)
        assert m(x, t, T).dtype == torch.float32
    cm = model("cm", "adm").cuda()
    bcm = bcm_from_cm(cm)
    assert next(bcm.parameters()).is_cuda
    with torch.no_grad():
        c_t = param.c_noise(t)
        F_cm = cm.net(x, c_t)
        F_bcm = bcm.net(x, c_t, param.c_noise(torch.full_like(t, 5.0)))
    assert (F_bcm - F_cm).abs().max().item() <= 1e-5
