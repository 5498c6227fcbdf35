"""Consistency distillation (CM Alg. 2) and bidirectional CD: the teacher's Heun step against the
exact flow of a Gaussian, zero loss at the exact flow map (and not elsewhere), the stop-gradient
and target network theta- against a two-copy reference, the BCD soft term's gradient path, the
(n, u) law, state for resume, and config errors."""

import copy

import pytest
import torch
from torch import nn

from bcmcore import param
from bcmcore.config import ConfigError, UserError, from_dict
from bcmcore.losses import build_loss, get_loss_class
from bcmcore.losses.cd import heun_step
from bcmcore.nets import ModelConfig, NetConfig, build_model, save_network

S, MU = 0.5, 0.3  # data ~ N(MU, S^2 I)
CM_CFG = ModelConfig(kind="cm", net=NetConfig(arch="mlp", data_channels=2))
BCM_CFG = ModelConfig(kind="bcm", net=NetConfig(arch="mlp", data_channels=2, two_time=True))


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):  # conftest.one_thread: tiny tensors run faster on one intra-op thread
    yield


class GaussDenoiser(nn.Module):
    """Ideal denoiser of N(MU, S^2 I): D(x, t) = MU + S^2 / (S^2 + t^2) (x - MU)."""

    kind = "edm"

    def forward(self, x, sigma, y=None):
        g = param.append_dims(S**2 / (S**2 + torch.as_tensor(sigma) ** 2), x.ndim)
        return MU + g * (x - MU)


class GaussFlow(nn.Module):
    """Exact flow map of N(theta, S^2 I) (theta learnable): theta + sqrt((S^2+u^2)/(S^2+t^2)) (x -
    theta); theta = MU is the teacher's flow."""

    kind, sigma_min, sigma_max = "bcm", 0.002, 80.0

    def __init__(self, theta=MU):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(float(theta)))
        self.calls = []

    def forward(self, x, t, u=None, y=None):
        self.calls.append((x.detach().clone(), torch.as_tensor(t).clone(), u))
        u = torch.full_like(t, self.sigma_min) if u is None else u
        a = param.append_dims(torch.sqrt((S**2 + u**2) / (S**2 + t**2)), x.ndim)
        return self.theta + a * (x - self.theta)


def exact_flow(x, t_from, t_to):
    a = param.append_dims(torch.sqrt((S**2 + t_to**2) / (S**2 + t_from**2)), x.ndim)
    return MU + a * (x - MU)


def make(kind="cd", model_cfg=CM_CFG, **options):
    cls = get_loss_class(kind)
    return cls(from_dict(cls.Config, options, "loss"), model_cfg, GaussDenoiser())


def batch(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": MU + S * torch.randn(n, 2, generator=g), "y": None}


# ------------------------------------------------------------------------ the teacher's Heun step


def test_heun_step_follows_the_exact_flow_to_second_order():
    """Local error O(h^3): halving the step divides it by ~8 (an Euler step, or a correction with
    a wrong sign or time, by ~4 or less); and it is the flow downwards, t_{n+1} -> t_n."""
    x = MU + torch.randn(64, 2, dtype=torch.float64)
    t1 = torch.full((64,), 0.7, dtype=torch.float64)
    den = GaussDenoiser()

    def errors(h):
        exact = exact_flow(x, t1, t1 - h)
        heun = heun_step(den, x, t1, t1 - h)
        euler = x - h * (x - den(x, t1)) / param.append_dims(t1, 2)
        return (heun - exact).norm(), (euler - exact).norm()

    (h1, e1), (h2, e2) = errors(0.1), errors(0.05)
    assert 7 < float(h1 / h2) < 9 and float(e1 / e2) < 5
    assert float(h1) < float(e1) / 5


@pytest.mark.parametrize("kind, cfg", [("cd", CM_CFG), ("bcd", BCM_CFG)])
@pytest.mark.parametrize("metric", ["l2", "pseudo_huber"])
def test_loss_is_heun_error_at_the_exact_flow_map_and_large_elsewhere(kind, cfg, metric):
    """On a fine grid (N = 80) the Heun step is nearly exact, so the exact flow map's loss is
    tiny; a flow map of the wrong data, or a teacher point off the ODE, is 300x worse."""
    opts = dict(metric=metric, huber_c=1e-4, weighting="uniform", num_points=80)
    with torch.no_grad():
        torch.manual_seed(0)
        at_exact = float(make(kind, cfg, **opts)(GaussFlow(MU), batch(), 0, 1)["loss"])
        torch.manual_seed(0)
        off = float(make(kind, cfg, **opts)(GaussFlow(MU + 0.2), batch(), 0, 1)["loss"])
    assert off > 300 * at_exact


# ------------------------------------------------------------- points, times, stop-gradient


@pytest.mark.parametrize("target_ema", [0.0, 0.5])
def test_student_and_target_points_and_the_stop_gradient(target_ema):
    loss = make(target_ema=target_ema)
    model = GaussFlow(MU + 0.1)
    loss.prepare(model)
    if loss.target is not None:  # theta- != theta: B must come from theta-
        loss.target.model.theta.data.fill_(MU - 0.05)
    torch.manual_seed(0)
    out = loss(model, batch(), 0, 1)
    out["loss"].backward()
    target = model if loss.target is None else loss.target.model
    (x1, t1, _) = model.calls[0]
    (x0, t0, _) = target.calls[-1]
    grid = param.karras_grid(18)
    idx = torch.searchsorted(grid.float(), t1.float())
    assert float(grid[0]) == pytest.approx(0.002) and float(grid[-1]) == pytest.approx(80.0)
    torch.testing.assert_close(t0.double(), grid[idx - 1], rtol=1e-6, atol=0)  # t_n below
    assert bool((t0 < t1).all())
    torch.testing.assert_close(x0, heun_step(GaussDenoiser(), x1, t1, t0), rtol=1e-5, atol=1e-6)
    # two-copy reference: student with grad, a frozen copy of theta- on the teacher point
    ref_model, frozen = copy.deepcopy(model), copy.deepcopy(target).requires_grad_(False)
    ref_model.theta.grad = None
    a = ref_model(x1, t1)
    ref = (a - frozen(x0, t0)).pow(2).flatten(1).mean(1).mean()  # L2, lambda = 1 (CM)
    ref.backward()
    torch.testing.assert_close(out["loss"], ref)
    torch.testing.assert_close(model.theta.grad, ref_model.theta.grad)
    if loss.target is not None:
        assert loss.target.model.theta.grad is None


def test_target_ema_update_and_state_round_trip():
    loss = make(target_ema=0.9)
    model = GaussFlow(1.0)
    loss.prepare(model)
    model.theta.data.fill_(2.0)
    loss.after_step(model)  # theta- <- 0.9 theta- + 0.1 theta (CM Alg. 2)
    assert float(loss.target.model.theta) == pytest.approx(1.1)
    state = copy.deepcopy(loss.state_dict())
    other = make(target_ema=0.9)
    other.prepare(GaussFlow(5.0))
    other.load_state_dict(state)
    assert float(other.target.model.theta) == pytest.approx(1.1)
    with pytest.raises(UserError, match="target network"):
        other.load_state_dict({})
    online = make()  # mu = 0: the target is the online weights, no state
    online.prepare(model)
    online.after_step(model)
    assert online.state_dict() == {} and online.target is None


# ---------------------------------------------------------------------------------- BCD


def test_bcd_soft_term_gradient_flows_through_c_only():
    """mu = 0 (theta- = sg(theta) by functional_call) must equal a separate frozen copy of theta
    (mu > 0 right after prepare): same values, same gradients. The soft term contributes."""
    torch.manual_seed(1)
    net = build_model(BCM_CFG)
    b = {"x": torch.randn(64, 2), "y": None}
    grads = []
    for mu in (0.0, 0.5):
        model = copy.deepcopy(net)
        loss = make("bcd", BCM_CFG, target_ema=mu, sync_dropout=False)
        loss.prepare(model)
        torch.manual_seed(2)
        out = loss(model, b, 0, 1)
        out["loss"].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if mu:
            assert all(p.grad is None for p in loss.target.model.parameters())
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-7)
    grads_mu0 = grads[0]

    # the soft term's gradient reaches theta through C: cut that path and the gradient changes
    def grads(cut_c):
        model, loss = copy.deepcopy(net), make("bcd", BCM_CFG, sync_dropout=False)
        if cut_c:
            inner = loss.target_net
            loss.target_net = lambda m: lambda x, t, **kw: inner(m)(x.detach(), t, **kw)
        torch.manual_seed(2)
        loss(model, b, 0, 1)["loss"].backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    assert not torch.allclose(grads(False), grads(True), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(grads(False), torch.cat([g.flatten() for g in grads_mu0]))


def test_bcd_index_law():
    loss = make("bcd", BCM_CFG, num_points=6)
    grid = loss.grid()
    torch.manual_seed(0)
    n, m = loss.sample_nm(grid, 20000)
    assert int(n.max()) == len(grid) - 3 and int(n.min()) == 0  # t_{n+1} < T
    assert bool((m != n + 1).all())  # u != t
    assert int(m.max()) == len(grid) - 2  # u never T by default
    counts = torch.bincount(m, minlength=len(grid)).double()[:-1]
    assert float(counts.std() / counts.mean()) < 0.2  # ~uniform over the N-1 lower points
    loss_T = make("bcd", BCM_CFG, num_points=6, u_T_prob=1.0)
    assert bool((loss_T.sample_nm(grid, 100)[1] == len(grid) - 1).all())


def test_cd_n_is_uniform_over_all_intervals():
    loss = make(num_points=5)
    torch.manual_seed(0)
    n = loss.sample_n(loss.grid(), 20000)
    counts = torch.bincount(n, minlength=4).double()
    assert len(counts) == 4 and float(counts.std() / counts.mean()) < 0.05  # CM Alg. 2


# ------------------------------------------------------------------------------- configs


def test_teacher_file_errors(tmp_path):
    """The file is read when training starts (prepare), so the workflow can check the config of a
    distillation stage before its teacher is trained."""
    student = build_model(CM_CFG)

    def prepared(model_cfg=CM_CFG, **loss):
        loss_fn = build_loss({"kind": "cd", **loss}, model_cfg)
        loss_fn.prepare(student)
        return loss_fn

    with pytest.raises(ConfigError, match="loss.teacher: .*not found"):
        prepared(teacher=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="loss.teacher: expected"):
        build_loss({"kind": "cd"}, CM_CFG)
    cm = tmp_path / "cm.pt"
    save_network(cm, build_model(CM_CFG), 0, {})
    with pytest.raises(ConfigError, match="'cm' network; distillation needs an EDM"):
        prepared(teacher=str(cm))
    edm = tmp_path / "edm.pt"
    edm_cfg = ModelConfig(kind="edm", net=NetConfig(arch="mlp", data_channels=2))
    save_network(edm, build_model(edm_cfg), 0, {})
    loss = prepared(teacher=str(edm))
    assert loss.teacher.kind == "edm"
    assert not any(p.requires_grad for p in loss.teacher.parameters())
    wide = ModelConfig(kind="cm", net=NetConfig(arch="mlp", data_channels=3))
    with pytest.raises(ConfigError, match="net.data_channels"):
        prepared(wide, teacher=str(edm))


@pytest.mark.parametrize(
    "options, model_cfg, match",
    [
        ({"metric": "lpips"}, CM_CFG, "loss.lpips_path"),
        ({"target_ema": 1.0}, CM_CFG, "loss.target_ema"),
        ({"num_points": 1}, CM_CFG, "loss.num_points"),
        ({"kind": "bcd"}, CM_CFG, "trains model.kind"),
        ({"kind": "bcd", "u_T_prob": 2.0}, BCM_CFG, "loss.u_T_prob"),
    ],
)
def test_bad_config(options, model_cfg, match):
    options = dict(options)
    kind = options.pop("kind", "cd")
    with pytest.raises(ConfigError, match=match):
        make(kind, model_cfg, **options)
