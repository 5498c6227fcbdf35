"""Bidirectional consistency training (BCM Eq. 10, Algorithm 1).

L_BCT = E[ lambda(t_n) d(A, B) + lambda'(t_{n+1}, u) d(E, B) ] with
  A = f_theta(x_{t_{n+1}}, t_{n+1}, eps)    student (CT term, Eq. 6)
  B = f_sg(theta)(x_{t_n}, t_n, eps)        teacher, the shared target of both terms
  C = f_theta(x_{t_{n+1}}, t_{n+1}, u)      student jump to u (u > t: inversion, u < t: denoising)
  E = f_sg(theta)(C, u, eps)                frozen weights; the gradient flows through its input C
lambda(t_n) = 1/(t_{n+1} - t_n), lambda'(t, u) = 1/|t - u| (soft trajectory term, Eq. 9 tied to
Eq. 6). All four passes share one dropout seed.
"""

from dataclasses import dataclass

import torch
from torch.func import functional_call

from bcmcore import param
from bcmcore.config import ConfigError
from bcmcore.losses.dropout import draw_seed, same_dropout
from bcmcore.losses.ict import ICTLoss
from bcmcore.losses.registry import register


@register("bct")
class BCTLoss(ICTLoss):
    """BCT from scratch or BCM fine-tuning (same objective; choose the curriculum kind "ict" or
    "phases")."""

    @dataclass(frozen=True)
    class Config(ICTLoss.Config):
        # share of examples whose trajectory-term target is u = T (inversion to the prior). The
        # authors' law (0) never draws u = T and puts ~1% of pairs at u >= 20 (docs/methods.md §5)
        u_T_prob: float = 0.0

    model_kinds = ("bcm",)

    def __init__(self, cfg, model_cfg):
        super().__init__(cfg, model_cfg)
        if not 0.0 <= cfg.u_T_prob <= 1.0:
            raise ConfigError(f"loss.u_T_prob: expected a value in [0, 1], got {cfg.u_T_prob}")
        if cfg.curriculum.min_intervals() < 2:
            raise ConfigError(
                "loss.curriculum: BCT needs at least 2 intervals (the top one is never a CT pair)"
            )

    def sample_indices(self, grid, batch_size):
        """(n, m) per example, vectorised (docs/methods.md §5).

        n ~ interval mass with the top interval excluded (t_{n+1} < T); m ~ the same unnormalised
        masses put on each interval's lower point (so u ranges over grid[0 .. N-2], never T), with m
        != n+1 (u != t).
        """
        mass = self.interval_mass(grid)  # [N-1], mass[i] ~ (grid[i], grid[i+1])
        n = torch.multinomial(mass[:-1], batch_size, replacement=True)
        w = mass.expand(batch_size, -1).clone()
        w[torch.arange(batch_size), n + 1] = 0.0  # n + 1 <= N - 2 always
        m = torch.multinomial(w, 1).squeeze(1)
        if self.cfg.u_T_prob > 0:  # u = T = grid[N-1] for a share of the batch (never equals t)
            top = torch.rand(batch_size) < self.cfg.u_T_prob
            m = torch.where(top, torch.full_like(m, len(grid) - 1), m)
        return n, m

    def teacher_map(self, model, c, u, y):
        """E = f(C, u, eps) with parameters detached but *not* under no_grad: d/dC flows, d/dtheta
        does not."""
        frozen = {k: v.detach() for k, v in model.named_parameters()}
        return functional_call(
            model, frozen, (c, u), {"y": y}, strict=False
        )  # f(C, u, u=None -> eps)

    def __call__(self, model, batch, step, total_steps):
        x, y = batch["x"], batch.get("y")
        grid = self.grid(step, total_steps)
        n, m = self.sample_indices(grid, x.shape[0])
        z = torch.randn_like(x)
        seed = draw_seed()
        as_t = lambda v: v.to(x.device, torch.float32)  # noqa: E731
        t_next, t_cur, u = as_t(grid[n + 1]), as_t(grid[n]), as_t(grid[m])
        w_ct = as_t(1.0 / (grid[n + 1] - grid[n]))  # lambda(t_n) = 1/dt
        w_soft = as_t(1.0 / (grid[n + 1] - grid[m]).abs())  # lambda'(t, u) = 1/|t - u|
        a, b = self.ct_pair(model, x, y, t_next, t_cur, z, seed)  # passes 1, 2
        sync = self.cfg.sync_dropout
        with same_dropout(seed, x.device, sync):
            c = model(x + param.append_dims(t_next, x.ndim) * z, t_next, u, y=y)  # pass 3
        with same_dropout(seed, x.device, sync):
            e = self.teacher_map(model, c, u, y)  # pass 4
        loss_ct = w_ct * self.distance(a, b, x)  # BCM Eq. 6
        loss_soft = w_soft * self.distance(e, b, x)  # BCM Eq. 10, soft term
        loss = (loss_ct + loss_soft).mean()
        return {
            "loss": loss,
            "loss_ct": loss_ct.mean().detach(),
            "loss_soft": loss_soft.mean().detach(),
            "num_points": torch.tensor(float(len(grid)), device=x.device),
        }
