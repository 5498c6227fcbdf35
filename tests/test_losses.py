"""iCT / BCT losses: exact zeros at a ground-truth flow map, a two-copy reference for values and
gradients, the pass-4 gradient path, synchronised dropout, (t, u) sampling, curriculum and config
errors."""

import copy

import pytest
import torch
from torch import nn

from bcmcore import param
from bcmcore.config import ConfigError
from bcmcore.losses import LOSSES, build_loss
from bcmcore.losses.bct import BCTLoss
from bcmcore.nets import ModelConfig, NetConfig, bcm_from_cm, build_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):  # conftest.one_thread: tiny tensors run faster on one intra-op thread
    yield


BCM_CFG = ModelConfig(kind="bcm", net=NetConfig(arch="mlp", two_time=True))


class PointMassFlow(nn.Module):
    """Exact PF-ODE flow map of data concentrated at theta: x_t = theta + t z, so f(x, t, u) = theta
    + (x - theta) u/t.

    For this data the one-sample Euler target of CT is exact, hence both BCT terms vanish
    identically at the true theta. `p` > 0 multiplies (x - theta) by a 0/1 dropout mask (idempotent:
    masks compose to themselves), so the loss stays zero iff every pass draws the same mask.
    """

    kind, sigma_min, sigma_max, sigma_data = "bcm", 0.002, 80.0, 0.5

    def __init__(self, theta, p=0.0):
        super().__init__()
        self.theta, self.p = nn.Parameter(theta.clone()), p

    def forward(self, x, t, u=None, y=None):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        u = (
            torch.full_like(t, self.sigma_min)
            if u is None
            else torch.as_tensor(u, dtype=x.dtype).expand_as(t)
        )
        keep = nn.functional.dropout(torch.ones_like(x), self.p, self.training) != 0
        return self.theta + keep * (x - self.theta) * param.append_dims(u / t, x.ndim)


class Recorder(nn.Module):
    """Passes through to `inner` and records every call's inputs and outputs (works under
    functional_call)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []
        self.kind, self.sigma_min, self.sigma_max = inner.kind, inner.sigma_min, inner.sigma_max

    def forward(self, x, t, u=None, y=None):
        out = self.inner(x, t, u, y=y)
        self.calls.append(
            {
                "x": x.detach().clone(),
                "t": torch.as_tensor(t).detach().clone(),
                "u": None if u is None else torch.as_tensor(u).detach().clone(),
                "out": out.detach().clone(),
                "grad": torch.is_grad_enabled(),
            }
        )
        return out


def mlp_bcm(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return build_model(
        ModelConfig(
            kind="bcm",
            net=NetConfig(
                arch="mlp",
                data_channels=2,
                channels=32,
                num_blocks=2,
                dropout=dropout,
                two_time=True,
            ),
        )
    )


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def run(loss, model, x, step=3, total=40, seed=0):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=False)
    out = loss(model, {"x": x, "y": None}, step, total)
    out["loss"].backward()
    return out


SHAPES = [(64, 2), (8, 3, 4, 4)]


# --- ground truth: exact zeros at a perfectly consistent model
# ---------------------------------------------
@pytest.mark.parametrize("kind", ["ict", "bct"])
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_vanishes_at_exact_flow_map_and_not_elsewhere(kind, shape):
    theta = torch.randn(shape[1:], dtype=torch.float64)
    x = theta.expand(shape).clone()  # point-mass data
    loss = build_loss({"kind": kind}, BCM_CFG)
    exact = run(loss, PointMassFlow(theta).double(), x)
    assert exact["loss"].item() < 1e-9, exact
    wrong = run(loss, PointMassFlow(theta + 0.3).double(), x)  # same map for a displaced point mass
    assert float(wrong["loss_ct"]) > 1e-2
    if kind == "bct":
        assert float(exact["loss_soft"]) < 1e-9 and float(wrong["loss_soft"]) > 1e-2


# --- reference: two model copies (student / frozen teacher), weights computed from the recorded
# times -----
def reference_bct(model, calls, x, with_soft):
    """Eq. 10 rebuilt from the recorded passes with a deep-copied frozen teacher (as the [C] code
    does)."""
    teacher = copy.deepcopy(model).requires_grad_(False)
    c1, c2 = calls[0], calls[1]
    t_next, t_cur = c1["t"].double(), c2["t"].double()
    hc = param.huber_c(x[0].numel())
    a = model(c1["x"], c1["t"])
    b = teacher(c2["x"], c2["t"])
    loss = param.pseudo_huber(a, b, hc) / (t_next - t_cur)
    if with_soft:
        u = calls[2]["u"]
        c = model(calls[2]["x"], calls[2]["t"], u)
        e = teacher(c, u)
        loss = loss + param.pseudo_huber(e, b, hc) / (t_next - u.double()).abs()
    return loss.mean()


def model_and_batch(which, shape):
    torch.manual_seed(1)
    if which == "mlp":
        return mlp_bcm(), torch.randn(shape)
    return PointMassFlow(torch.randn(shape[1:])), torch.randn(shape) * 0.5


@pytest.mark.parametrize("which,shape", [("mlp", SHAPES[0]), ("pointmass", SHAPES[1])])
@pytest.mark.parametrize("kind", ["ict", "bct"])
def test_loss_and_gradient_match_two_copy_reference(which, shape, kind):
    model, x = model_and_batch(which, shape)
    rec = Recorder(model)
    out = run(build_loss({"kind": kind}, BCM_CFG), rec, x)
    g = grads(model)
    calls = rec.calls
    assert len(calls) == (4 if kind == "bct" else 2)
    # pass structure: same z in student and teacher, adjacent grid points, teacher without grad
    c1, c2 = calls[0], calls[1]
    grid = param.karras_grid(int(out["num_points"])).float()
    idx = torch.searchsorted(grid, c2["t"])
    assert torch.equal(grid[idx], c2["t"]) and torch.equal(grid[idx + 1], c1["t"])
    z1 = (c1["x"] - x) / param.append_dims(c1["t"], x.ndim)
    z2 = (c2["x"] - x) / param.append_dims(c2["t"], x.ndim)
    assert torch.allclose(z1, z2, atol=1e-4) and c1["u"] is None and c2["u"] is None
    assert c1["grad"] and not c2["grad"]
    if kind == "bct":
        c3, c4 = calls[2], calls[3]
        assert torch.equal(c3["x"], c1["x"]) and torch.equal(c3["t"], c1["t"])
        assert torch.equal(c4["x"], c3["out"]) and torch.equal(c4["t"], c3["u"]) and c4["u"] is None
        assert c4["grad"], (
            "pass 4 must not run under no_grad: the soft term's gradient flows through C"
        )
        assert (c3["u"] != c3["t"]).all() and (c3["u"] < 80.0).all()
    model.zero_grad(set_to_none=False)
    ref = reference_bct(model, calls, x, kind == "bct")
    ref.backward()
    assert torch.allclose(out["loss"], ref.float(), rtol=1e-5), (out["loss"], ref)
    assert torch.allclose(g, grads(model), rtol=1e-4, atol=1e-6)


# --- the pass-4 gradient path: a stray detach, or gradients into the teacher, change the gradient
# ----------
class DetachedInputBCT(BCTLoss):
    def teacher_map(self, model, c, u, y):  # the bug: no gradient through C
        return super().teacher_map(model, c.detach(), u, y)


class LiveTeacherBCT(BCTLoss):
    def teacher_map(self, model, c, u, y):  # the bug: pass-4 weights receive gradient too
        return model(c, u, y=y)


@pytest.mark.parametrize("shape", SHAPES)
def test_bct_pass4_gradient_flows_through_input_only(shape):
    model, x = model_and_batch("mlp" if len(shape) == 2 else "pointmass", shape)
    cfg = BCTLoss.Config()
    out = run(BCTLoss(cfg, BCM_CFG), model, x)
    g = grads(model).clone()
    for variant in (DetachedInputBCT, LiveTeacherBCT):
        other = run(variant(cfg, BCM_CFG), model, x)
        assert torch.equal(other["loss"], out["loss"])  # same draws, same value ...
        diff = (grads(model) - g).norm() / g.norm()
        assert diff > 1e-3, (variant.__name__, float(diff))  # ... but a different gradient


def test_bcm_from_cm_u_branch_trains_under_bct():
    torch.manual_seed(0)
    cm = build_model(
        ModelConfig(
            kind="cm", net=NetConfig(arch="mlp", data_channels=2, channels=32, num_blocks=2)
        )
    )
    bcm = bcm_from_cm(cm).train()
    loss = build_loss(
        {"kind": "bct", "curriculum": {"kind": "phases", "phases": [[100, 320]]}}, bcm.cfg
    )
    x = torch.randn(64, 2)
    u_params = {k: p for k, p in bcm.named_parameters() if "mlp_u" in k or "align" in k}
    assert u_params
    for _ in range(2):  # [I|0] blocks the u-MLP's gradient until the first step moves W_align
        run(loss, bcm, x, step=0, total=100)
        with torch.no_grad():  # a plain gradient step (torch.optim's first import costs seconds)
            for p in bcm.parameters():
                p.sub_(1e-2 * p.grad)
    for k, p in u_params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, k


# --- synchronised dropout
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ict", "bct"])
def test_dropout_masks_identical_in_all_passes(kind):
    theta = torch.randn(2, dtype=torch.float64)
    x = theta.expand(256, 2).clone()
    model = PointMassFlow(theta, p=0.5).double().train()
    synced = run(build_loss({"kind": kind}, BCM_CFG), model, x)
    unsynced = run(build_loss({"kind": kind, "sync_dropout": False}, BCM_CFG), model, x)
    assert synced["loss"].item() < 1e-9
    assert unsynced["loss"].item() > 1e-4  # differences are O(sigma_min) here, the zero is exact


def test_dropout_sync_with_real_mlp_in_small_step_limit():
    """t_{n+1} -> t_n (10^5 intervals): student and teacher outputs coincide only if their masks
    do."""
    model = mlp_bcm(dropout=0.3).train()
    x = torch.randn(128, 2)
    gaps = {}
    for sync in (True, False):
        rec = Recorder(model)
        loss = build_loss(
            {
                "kind": "ict",
                "sync_dropout": sync,
                "curriculum": {"kind": "phases", "phases": [[1, 100000]]},
            },
            BCM_CFG,
        )
        run(loss, rec, x)
        gaps[sync] = float((rec.calls[0]["out"] - rec.calls[1]["out"]).abs().max())
    assert gaps[True] < 1e-3 and gaps[False] > 100 * gaps[True], gaps


def test_dropout_leaves_global_rng_stream_untouched():
    x = torch.randn(32, 2)
    states = []
    for p in (0.0, 0.5):
        model = mlp_bcm(dropout=p).train()
        run(build_loss({"kind": "bct"}, BCM_CFG), model, x)
        states.append(torch.rand(4))
    assert torch.equal(*states)


@pytest.mark.gpu
def test_dropout_sync_on_cuda():
    theta = torch.randn(2, dtype=torch.float64, device="cuda")
    model = PointMassFlow(theta, p=0.5).double().cuda().train()
    out = run(build_loss({"kind": "bct"}, BCM_CFG), model, theta.expand(256, 2).clone())
    assert out["loss"].item() < 1e-9


# --- (t, u) sampling and curriculum
# --------------------------------------------------------------------------
def test_bct_index_sampling_law():
    loss = build_loss({"kind": "bct"}, BCM_CFG)
    grid = param.karras_grid(11)
    torch.manual_seed(0)
    B = 200_000
    n, m = loss.sample_indices(grid, B)
    mass = param.lognormal_interval_mass(grid)
    assert int(n.max()) <= 8 and int(m.max()) <= 9  # t_{n+1} < T and u < T
    assert not (m == n + 1).any()  # u != t
    freq_n = torch.bincount(n, minlength=10).double() / B
    assert torch.allclose(freq_n[:9], mass[:9] / mass[:9].sum(), atol=4e-3)
    # conditional law of m given n: the interval masses on lower points, with index n+1 removed
    sel = n == 4
    expect = mass.clone()
    expect[5] = 0
    freq_m = torch.bincount(m[sel], minlength=10).double() / sel.sum()
    assert torch.allclose(freq_m, expect / expect.sum(), atol=1e-2)


def test_ict_index_law_includes_top_interval():
    loss = build_loss({"kind": "ict"}, BCM_CFG)
    model = Recorder(PointMassFlow(torch.zeros(2)))
    run(loss, model, torch.zeros(100_000, 2), step=0, total=10)
    t_next = model.calls[0]["t"]
    grid = param.karras_grid(11).float()
    freq = (t_next[:, None] == grid[None, 1:]).double().mean(0)
    assert torch.allclose(freq, param.lognormal_interval_mass(grid.double()), atol=6e-3)


@pytest.mark.parametrize(
    "curriculum,steps,expect",
    [
        (
            {"kind": "ict", "s0": 10, "s1": 1280},
            [0, 999, 1000, 6999, 8000, 10**6],
            [11, 11, 21, 641, 1281, 1281],
        ),
        (
            {"kind": "phases", "phases": [[5, 320], [2, 640], [1, 1280]]},
            [0, 4, 5, 6, 7, 100],
            [321, 321, 641, 641, 1281, 1281],
        ),
    ],
)
def test_curriculum(curriculum, steps, expect):
    loss = build_loss({"kind": "bct", "curriculum": curriculum}, BCM_CFG)
    assert [len(loss.grid(s, 8000)) for s in steps] == expect
    out = loss(PointMassFlow(torch.zeros(2)), {"x": torch.zeros(4, 2), "y": None}, steps[2], 8000)
    assert int(out["num_points"]) == expect[2]
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")


def test_huber_c_override_is_used():
    theta = torch.zeros(2)
    model, x = PointMassFlow(theta + 0.3), torch.zeros(16, 2)
    small = run(build_loss({"kind": "ict", "huber_c": 1e-6}, BCM_CFG), model, x)
    big = run(build_loss({"kind": "ict", "huber_c": 10.0}, BCM_CFG), model, x)
    assert big["loss"].item() < 0.1 * small["loss"].item()


def test_authors_huber_form_is_c_006_over_sqrt_d():
    # BCM-iCT-torch: (sqrt(||a - b||^2 + 0.06^2) - 0.06) / sqrt(D); ours: c = 0.00054 sqrt(D), no /
    x = torch.zeros(2, 1, 8, 8)  # D = 64
    a, b = torch.full_like(x, 0.01), torch.zeros_like(x)  # ||a - b|| = 0.08 per sample
    authors = build_loss({"kind": "bct", "huber_c": 0.06, "huber_per_sqrt_dim": True}, BCM_CFG)
    assert authors.distance(a, b, x).tolist() == pytest.approx([(0.1 - 0.06) / 8] * 2, rel=1e-5)
    ours = build_loss({"kind": "bct"}, BCM_CFG)
    c = 0.00054 * 8
    expect = (0.08**2 + c**2) ** 0.5 - c
    assert ours.distance(a, b, x).tolist() == pytest.approx([expect] * 2, rel=1e-5)
    # and it reaches the objective: same draws, the loss divided by sqrt(D) = 8
    model, xs = PointMassFlow(torch.zeros(64) + 0.3), torch.zeros(16, 64)
    plain = run(build_loss({"kind": "bct", "huber_c": 0.06}, BCM_CFG), model, xs)
    scaled = run(authors, model, xs)
    assert scaled["loss"].item() == pytest.approx(plain["loss"].item() / 8, rel=1e-5)


# --- configuration errors
# ------------------------------------------------------------------------------------
def test_unknown_loss_kind_names_key_and_known_kinds():
    with pytest.raises(ConfigError, match=r"loss\.kind.*'nope'.*bcd, bct, cd, edm, ict, igct"):
        build_loss({"kind": "nope"}, BCM_CFG)
    with pytest.raises(ConfigError, match=r"loss\.kind"):
        build_loss({}, BCM_CFG)
    assert {"ict", "bct"} <= set(LOSSES)


@pytest.mark.parametrize(
    "loss_dict,match",
    [
        ({"kind": "ict", "lr": 1}, r"loss\.lr"),
        ({"kind": "bct", "curriculum": {"kind": "phases"}}, r"loss\.curriculum\.phases"),
        (
            {"kind": "bct", "curriculum": {"kind": "phases", "phases": [[10, 1]]}},
            r"at least 2 intervals",
        ),
        ({"kind": "ict", "curriculum": {"s0": 20, "s1": 10}}, r"loss\.curriculum"),
        ({"kind": "ict", "P_std": "two"}, r"loss\.P_std"),
    ],
)
def test_bad_loss_config(loss_dict, match):
    with pytest.raises(ConfigError, match=match):
        build_loss(loss_dict, BCM_CFG)


def test_bct_requires_bcm_model():
    with pytest.raises(ConfigError, match=r"model\.kind"):
        build_loss({"kind": "bct"}, ModelConfig(kind="cm", net=NetConfig(arch="mlp")))
    build_loss({"kind": "ict"}, ModelConfig(kind="cm", net=NetConfig(arch="mlp")))


def test_bct_u_T_prob_sends_that_share_of_targets_to_T():
    grid = param.karras_grid(11)
    torch.manual_seed(0)
    n0, m0 = build_loss({"kind": "bct"}, BCM_CFG).sample_indices(grid, 20_000)
    assert int(m0.max()) <= 9  # the authors' law: never u = T
    loss = build_loss({"kind": "bct", "u_T_prob": 0.25}, BCM_CFG)
    n, m = loss.sample_indices(grid, 20_000)
    top = m == 10
    assert abs(float(top.double().mean()) - 0.25) < 0.02 and not (m == n + 1).any()
    with pytest.raises(ConfigError, match=r"loss\.u_T_prob"):
        build_loss({"kind": "bct", "u_T_prob": 1.5}, BCM_CFG)
