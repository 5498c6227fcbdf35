"""The train device keys (bcmcore/train/device.py): defaults, flags, channels_last, compile."""

import pytest
import torch

from bcmcore.config import ConfigError, from_dict
from bcmcore.losses import build_loss
from bcmcore.nets import ModelConfig, NetConfig, build_model
from bcmcore.train import TrainConfig
from bcmcore.train import device as device_keys
from bcmcore.train.step import Stepper

TINY_NCSNPP = ModelConfig(
    kind="bcm",
    net=NetConfig(
        arch="ncsnpp",
        channels=16,
        ch_mult=(1, 2),
        num_blocks=1,
        resolution=8,
        attn_res=(4,),
        two_time=True,
    ),
)


def test_defaults_follow_the_reference_repos_and_types_are_checked():
    t = TrainConfig()
    assert (t.tf32, t.cudnn_benchmark, t.deterministic, t.channels_last, t.compile) == (
        True,
        True,
        False,
        False,
        False,
    )
    with pytest.raises(ConfigError, match="train.deterministic"):
        from_dict(TrainConfig, {"deterministic": "yes"}, "train")


def test_configure_backends_sets_and_resets_deterministic_mode():
    try:
        device_keys.configure_backends(TrainConfig(deterministic=True), torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
        device_keys.configure_backends(TrainConfig(), torch.device("cpu"))
        assert not torch.are_deterministic_algorithms_enabled()  # a second job does not inherit
    finally:
        torch.use_deterministic_algorithms(False)


def _step(channels_last):
    torch.manual_seed(0)
    model = build_model(TINY_NCSNPP)
    t = TrainConfig(total_steps=100, batch=4, channels_last=channels_last)
    stepper = Stepper(
        model, build_loss({"kind": "bct"}, TINY_NCSNPP), t, torch.device("cpu"), False
    )
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    terms = stepper.backward(iter([{"x": x, "y": None}]), step=50)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    stepper.update()
    return model, stepper, terms, grads


def test_channels_last_changes_layout_not_the_step(one_thread):
    plain, _, terms_a, grads_a = _step(False)
    nhwc, stepper, terms_b, grads_b = _step(True)
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not next(
        m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)
    ).weight.is_contiguous(memory_format=torch.channels_last)
    ema_conv = next(m for m in stepper.ema.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert ema_conv.weight.is_contiguous(memory_format=torch.channels_last)  # EMA copied after
    assert terms_a.keys() == terms_b.keys()
    for k in terms_a:
        assert terms_b[k] == pytest.approx(terms_a[k], rel=1e-5, abs=1e-6), k
    for k in grads_a:
        torch.testing.assert_close(grads_b[k], grads_a[k], rtol=1e-4, atol=1e-6)
    fresh = build_model(TINY_NCSNPP)
    fresh.load_state_dict(nhwc.state_dict())  # network files load into a plain model
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), nhwc.state_dict().values())
    )


def test_mlp_ignores_channels_last():
    cfg = ModelConfig(
        kind="cm", net=NetConfig(arch="mlp", data_channels=2, channels=8, num_blocks=1)
    )
    assert not device_keys.uses_channels_last(TrainConfig(channels_last=True), build_model(cfg))
    assert device_keys.uses_channels_last(TrainConfig(channels_last=True), build_model(TINY_NCSNPP))


def test_compile_keeps_parameter_names_and_outputs(one_thread):
    torch.manual_seed(0)
    model = build_model(TINY_NCSNPP).eval()
    keys = list(model.state_dict())
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 2.0)
    with torch.no_grad():
        ref = model(x, t)
    device_keys.compile_model(model, backend="eager")  # dynamo traces; no C++ toolchain needed
    assert list(model.state_dict()) == keys  # checkpoints and the EMA see the same names
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), ref)
    assert model.net._compiled_call_impl is not None


@pytest.mark.gpu
@pytest.mark.parametrize("loss", ["ict", "bct", "igct", "edm"])
def test_one_bf16_step_per_loss_on_cuda_keeps_everything_on_the_device(loss):
    """bf16 autocast through every loss (BCT's functional_call pass, both iGCT nets); EMA and
    optimizer state on the GPU; the logged terms (some on the CPU) reduce to floats."""
    kind = {"ict": "cm", "bct": "bcm", "igct": "igct", "edm": "edm"}[loss]
    net = NetConfig(
        arch="ncsnpp", channels=32, ch_mult=(1, 2), num_blocks=1, resolution=8, attn_res=(4,),
        two_time=kind == "bcm", num_classes=3 if kind in ("igct", "edm") else 0, dropout=0.1,
    )  # fmt: skip
    cfg = ModelConfig(kind=kind, net=net)
    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    t = TrainConfig(total_steps=100, batch=8, bf16=True, channels_last=True)
    stepper = Stepper(model, build_loss({"kind": loss}, cfg), t, dev, net.num_classes > 0)
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    batch = {"x": x, "y": torch.randint(0, 3, (8,)), "x_src": torch.rand(8, 3, 8, 8) * 2 - 1}
    terms = stepper.backward(iter([batch]), step=50)
    stepper.update()
    torch.cuda.synchronize()
    assert all(isinstance(v, float) and v == v for v in terms.values()), terms
    assert all(p.is_cuda for p in stepper.ema.model.parameters())
    state = stepper.optimizer.state_dict()["state"]
    assert state and all(v.is_cuda for s in state.values() for k, v in s.items() if k != "step")


@pytest.mark.gpu
def test_loader_batches_arrive_on_the_gpu_from_pinned_memory(shards):  # noqa: F811
    from bcmcore.data import DataConfig, make_loader

    cfg = from_dict(DataConfig, {"shards": str(shards), "num_workers": 1}, "data")
    cpu = next(make_loader(cfg, 8, seed=3))
    gpu = next(make_loader(cfg, 8, seed=3, device=torch.device("cuda", 0)))
    assert gpu["x"].is_cuda and gpu["y"].is_cuda
    torch.testing.assert_close(gpu["x"].cpu(), cpu["x"], rtol=0, atol=1e-6)  # same batch
    assert torch.equal(gpu["y"].cpu(), cpu["y"])


def test_grad_clip_bounds_the_global_norm_and_reports_it_unclipped(one_thread):
    def step(clip):
        torch.manual_seed(0)
        model = build_model(TINY_NCSNPP)
        t = TrainConfig(total_steps=100, batch=4, grad_clip=clip)
        stepper = Stepper(model, build_loss({"kind": "bct"}, TINY_NCSNPP), t, torch.device("cpu"))
        x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
        terms = stepper.backward(iter([{"x": x, "y": None}]), step=50)
        norm = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return terms, float(norm.norm())

    free_terms, free_norm = step(None)
    assert free_norm > 1.0  # the clip must have work to do
    assert free_terms["grad_norm"] == pytest.approx(
        free_norm, rel=1e-4
    )  # logged without a clip too
    terms, norm = step(1.0)  # the BCM authors' fp32 path (BCM-iCT-torch)
    assert norm == pytest.approx(1.0, rel=1e-4)
    assert terms["grad_norm"] == pytest.approx(free_norm, rel=1e-4)
