"""Consistency distillation (CM Alg. 2) and its bidirectional form (this project's extension,
docs/methods.md §15).

CD: L = E[ lambda(t_n) d( f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(xhat_{t_n}, t_n) ) ] (CM Eq. 7)
  x_{t_{n+1}} = x + t_{n+1} z, xhat_{t_n} = one Heun step of the teacher's PF ODE from t_{n+1} to
  t_n (CM Eq. 6 with Phi = EDM's Heun), n ~ U{0 .. N-2} on the Karras grid of N points,
  theta- <- mu theta- + (1 - mu) theta after every step (CM Alg. 2), lambda = 1 (CM Table 3).
BCD (kind `bcd`): BCT's Eq. 10 with the CT point x + t_n z replaced by the teacher's Heun step:
  L = E[ lambda d(A, B) + lambda' d(E, B) ], A = f_theta(x_{t_{n+1}}, t_{n+1}),
  B = f_theta-(xhat_{t_n}, t_n), C = f_theta(x_{t_{n+1}}, t_{n+1}, u), E = f_theta-(C, u)
  (gradient through C only).
The teacher is an EDM-kind denoiser D(x, sigma, y) (an `edm` experiment's network or an imported
one), frozen and in eval mode.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.func import functional_call

from bcmcore import param
from bcmcore.config import ConfigError, UserError
from bcmcore.losses.dropout import draw_seed, same_dropout, shared_dropout
from bcmcore.losses.registry import register
from bcmcore.train.ema import EMA


def heun_step(teacher, x, t_from, t_to, y=None):
    """One Heun step of dx/dt = (x - D(x, t)) / t from t_from to t_to (EDM Alg. 1 lines 5-8; the
    Phi of CM Eq. 6). t_from, t_to: [B]."""
    dt = param.append_dims(t_to - t_from, x.ndim)
    d_from = (x - teacher(x, t_from, y).float()) / param.append_dims(t_from, x.ndim)
    x_euler = x + dt * d_from
    d_to = (x_euler - teacher(x_euler, t_to, y).float()) / param.append_dims(t_to, x.ndim)
    return x + dt * (d_from + d_to) / 2


def load_teacher(path, model_cfg):
    """An EDM-kind network file, frozen; a wrong kind or data shape is one ConfigError."""
    from bcmcore.nets import load_network

    if not Path(path).is_file():
        raise ConfigError(
            f"loss.teacher: {path} not found (expected the network-final.pt of an edm "
            f"experiment or of an imported EDM)"
        )
    teacher, meta = load_network(path)
    if meta["kind"] != "edm":
        raise ConfigError(
            f"loss.teacher: {path} is a {meta['kind']!r} network; distillation needs an EDM "
            f"denoiser (model.kind 'edm')"
        )
    mine, theirs = model_cfg.net, meta["model_config"].net
    for key in ("data_channels", "resolution"):
        if getattr(mine, key, None) != getattr(theirs, key, None):
            raise ConfigError(
                f"loss.teacher: {path} has net.{key} {getattr(theirs, key, None)}, the student "
                f"{getattr(mine, key, None)}"
            )
    return teacher.requires_grad_(False)


def teacher_digest(spec):
    """`loss.teacher_id`: digest of what the teacher network depends on (its identity keys, or its
    import spec), written by the workflow, so a retrained or re-imported teacher starts the
    student over (bcmcore/train/identity.py)."""
    text = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LPIPSMetric(torch.nn.Module):
    """LPIPS-AlexNet with gradients, images upsampled to 224 px (CM §5 / its code: bilinear
    resize before LPIPS); grey images repeated to RGB."""

    def __init__(self, backbone_path):
        super().__init__()
        from bcmcore.metrics.perceptual import lpips_alex

        self.net = lpips_alex(backbone_path).net

    def forward(self, a, b):
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        if a.shape[-1] < 256:
            up = dict(size=224, mode="bilinear", align_corners=False)
            resize = torch.nn.functional.interpolate
            a, b = resize(a, **up), resize(b, **up)
        return self.net(a.float(), b.float()).reshape(-1)


@register("cd")
class CDLoss:
    """Consistency distillation into a CM (or a BCM's t -> eps map)."""

    @dataclass(frozen=True)
    class Config:
        teacher: str | None = None  # EDM network file (the workflow's `teacher_from`)
        teacher_id: str | None = None  # the teacher's identity digest (workflow): a change restarts
        num_points: int = 18  # N (CM Table 3: 18 CIFAR-10, 40 ImageNet-64 / LSUN)
        rho: float = 7.0  # Karras grid exponent (CM Eq. 8 / EDM)
        target_ema: float = 0.0  # target mu (CM Table 3: 0 CIFAR-10, 0.95 ImageNet-64)
        metric: Literal["l2", "lpips", "pseudo_huber"] = "l2"
        lpips_path: str | None = None  # staged torchvision AlexNet file (metric lpips)
        huber_c: float | None = None  # pseudo-Huber c; None: 0.00054 sqrt(D) (iCT)
        weighting: Literal["uniform", "inverse_dt"] = "uniform"  # lambda = 1 (CM) or 1/dt (iCT)
        sync_dropout: bool = True  # same dropout masks in the student and target passes

    model_kinds = ("cm", "bcm")

    def __init__(self, cfg, model_cfg, teacher=None):
        if model_cfg.kind not in self.model_kinds:
            raise ConfigError(
                f"loss.kind: {self.kind!r} trains model.kind in {list(self.model_kinds)}, "
                f"got model.kind {model_cfg.kind!r}"
            )
        if cfg.num_points < (3 if self.kind == "bcd" else 2):
            raise ConfigError(f"loss.num_points: too few grid points ({cfg.num_points})")
        if not 0.0 <= cfg.target_ema < 1.0:
            raise ConfigError(f"loss.target_ema: expected a value in [0, 1), got {cfg.target_ema}")
        if cfg.metric == "lpips" and not cfg.lpips_path:
            raise ConfigError(
                "loss.lpips_path: metric 'lpips' needs the staged torchvision AlexNet file "
                "(or choose loss.metric l2 / pseudo_huber)"
            )
        if teacher is None and cfg.teacher is None:
            raise ConfigError(
                "loss.teacher: expected the network file of an EDM teacher (workflow: teacher_from)"
            )
        self.cfg, self.model_cfg = cfg, model_cfg
        self.sigma_min, self.sigma_max = float(model_cfg.sigma_min), float(model_cfg.sigma_max)
        # the files are read by prepare(), when training starts: the workflow builds the loss to
        # check its config before the teacher is trained and the LPIPS network staged
        self.teacher, self.lpips = teacher, None
        self.target = None  # EMA target theta- (mu > 0), made by prepare()

    # -- state the training loop carries (bcmcore/train/step.py, loop.py)
    # --------------------------------------------------------------
    def prepare(self, model):
        """Teacher and LPIPS read and put on the model's device; theta- <- theta (CM Alg. 2)."""
        device = next(model.parameters()).device
        if self.teacher is None:
            self.teacher = load_teacher(self.cfg.teacher, self.model_cfg)
        if self.cfg.metric == "lpips" and self.lpips is None:
            self.lpips = LPIPSMetric(self.cfg.lpips_path)
        self.teacher.to(device).eval()
        if self.lpips is not None:
            self.lpips.to(device).eval().requires_grad_(False)
        if self.cfg.target_ema > 0:
            self.target = EMA(model, self.cfg.target_ema)
            self.target.model.train()  # the target sees the student's dropout masks

    def after_step(self, model):
        """theta- <- stopgrad(mu theta- + (1 - mu) theta) (CM Alg. 2)."""
        if self.target is not None:
            self.target.update(model)

    def state_dict(self):
        return {"target": self.target.state_dict()} if self.target is not None else {}

    def load_state_dict(self, state):
        if self.target is not None:
            if "target" not in state:
                raise UserError(
                    "training state: no target network theta- for loss.target_ema > 0 (written "
                    "by another loss); move the run directory away to start over"
                )
            self.target.load_state_dict(state["target"])

    # -- pieces
    # ---------------------------------------------------------------------------------
    def grid(self):
        return param.karras_grid(self.cfg.num_points, self.sigma_min, self.sigma_max, self.cfg.rho)

    def target_net(self, model):
        """theta- as a function: the EMA copy, or the online weights detached (mu = 0): either way
        no gradient reaches theta through it, while one flows through its input (BCD's E)."""
        if self.target is not None:
            return self.target.model
        frozen = {k: v.detach() for k, v in model.named_parameters()}
        return lambda *args, **kw: functional_call(model, frozen, args, kw, strict=False)

    def distance(self, a, b):
        if self.cfg.metric == "l2":
            return (a - b).flatten(1).float().pow(2).mean(1)  # CM: mean squared error
        if self.cfg.metric == "pseudo_huber":
            c = self.cfg.huber_c if self.cfg.huber_c is not None else param.huber_c(a[0].numel())
            return param.pseudo_huber(a, b, c)  # iCT §3.3
        return self.lpips(a, b)  # CM §5: LPIPS, the paper's best metric

    def weight(self, t_hi, t_lo):
        if self.cfg.weighting == "uniform":
            return torch.ones_like(t_hi, dtype=torch.float32)  # lambda(t_n) = 1 (CM Table 3)
        return (1.0 / (t_hi - t_lo).abs()).float()  # 1/dt (iCT), 1/|t - u| (BCM Eq. 10)

    def teacher_point(self, x_next, t_next, t_cur, y):
        """xhat_{t_n}: the teacher's Heun step from (x_{t_{n+1}}, t_{n+1}) to t_n (CM Eq. 6)."""
        with torch.no_grad():
            return heun_step(self.teacher, x_next.float(), t_next, t_cur, y).to(x_next.dtype)

    def sample_n(self, grid, batch_size):
        return torch.randint(0, len(grid) - 1, (batch_size,))  # n ~ U{0 .. N-2} (CM Alg. 2)

    # -- the objective
    # ---------------------------------------------------------------------------------
    def __call__(self, model, batch, step, total_steps):
        x, y = batch["x"], batch.get("y")
        grid = self.grid()
        n = self.sample_n(grid, x.shape[0])
        as_t = lambda v: v.to(x.device, torch.float32)  # noqa: E731
        t_next, t_cur = as_t(grid[n + 1]), as_t(grid[n])
        x_next = x + param.append_dims(t_next, x.ndim) * torch.randn_like(x)
        x_hat = self.teacher_point(x_next, t_next, t_cur, y)
        target = self.target_net(model)
        a, b = shared_dropout(  # A with grad, B = f_theta-(xhat, t_n) under no_grad
            lambda: model(x_next, t_next, y=y),
            lambda: target(x_hat, t_cur, y=y),
            x.device,
            draw_seed(),
            self.cfg.sync_dropout,
        )
        loss = (self.weight(t_next, t_cur) * self.distance(a, b)).mean()  # CM Eq. 7
        return {"loss": loss, "loss_cd": loss.detach()}


@register("bcd")
class BCDLoss(CDLoss):
    """Bidirectional consistency distillation: BCM Eq. 10 with the teacher's Heun step as the CT
    pair's lower point (this project's extension, docs/methods.md §15)."""

    @dataclass(frozen=True)
    class Config(CDLoss.Config):
        weighting: Literal["uniform", "inverse_dt"] = "inverse_dt"  # BCM Eq. 10's lambda, lambda'
        u_T_prob: float = 0.0  # share of trajectory targets at u = T (docs/sampler_times.md §4)

    model_kinds = ("bcm",)

    def __init__(self, cfg, model_cfg, teacher=None):
        super().__init__(cfg, model_cfg, teacher)
        if not 0.0 <= cfg.u_T_prob <= 1.0:
            raise ConfigError(f"loss.u_T_prob: expected a value in [0, 1], got {cfg.u_T_prob}")

    def sample_nm(self, grid, batch_size):
        """n ~ U{0 .. N-3} (t_{n+1} < T), m ~ U over grid[0 .. N-2] minus n+1 (u != t), or u = T
        with probability u_T_prob; the uniform law of CM Alg. 2 in place of BCT's lognormal."""
        n = torch.randint(0, len(grid) - 2, (batch_size,))
        m = torch.randint(0, len(grid) - 2, (batch_size,))
        m = m + (m >= n + 1).long()  # skip t itself: uniform over the other N-2 points
        if self.cfg.u_T_prob > 0:
            top = torch.rand(batch_size) < self.cfg.u_T_prob
            m = torch.where(top, torch.full_like(m, len(grid) - 1), m)
        return n, m

    def __call__(self, model, batch, step, total_steps):
        x, y = batch["x"], batch.get("y")
        grid = self.grid()
        n, m = self.sample_nm(grid, x.shape[0])
        as_t = lambda v: v.to(x.device, torch.float32)  # noqa: E731
        t_next, t_cur, u = as_t(grid[n + 1]), as_t(grid[n]), as_t(grid[m])
        x_next = x + param.append_dims(t_next, x.ndim) * torch.randn_like(x)
        x_hat = self.teacher_point(x_next, t_next, t_cur, y)
        target, seed, sync = self.target_net(model), draw_seed(), self.cfg.sync_dropout
        a, b = shared_dropout(
            lambda: model(x_next, t_next, y=y),
            lambda: target(x_hat, t_cur, y=y),
            x.device,
            seed,
            sync,
        )
        with same_dropout(seed, x.device, sync):
            c = model(x_next, t_next, u, y=y)  # student jump t_{n+1} -> u
        with same_dropout(seed, x.device, sync):
            e = target(c, u, y=y)  # f_theta-(C, u): d/dC flows, d/dtheta- does not
        loss_cd = self.weight(t_next, t_cur) * self.distance(a, b)  # CM Eq. 7 / BCM Eq. 6
        loss_soft = self.weight(t_next, u) * self.distance(e, b)  # BCM Eq. 10, soft term
        loss = (loss_cd + loss_soft).mean()
        return {
            "loss": loss,
            "loss_cd": loss_cd.mean().detach(),
            "loss_soft": loss_soft.mean().detach(),
        }
