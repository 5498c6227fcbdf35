"""Improved consistency training (Song & Dhariwal 2024), in the BCM Eq. 6 form.

L_CT = E[ lambda(t_n) d( f_theta(x + t_{n+1} z, t_{n+1}), f_{sg(theta)}(x + t_n z, t_n) ) ],
lambda(t_n) = 1/(t_{n+1} - t_n), d = pseudo-Huber with c = 0.00054 sqrt(D), n ~ discretised
lognormal on the Karras grid of the curriculum's current size, and a teacher that is the *online*
weights under stop-gradient (no EMA teacher). Student and teacher passes see the same dropout masks.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from bcmcore import param
from bcmcore.config import ConfigError
from bcmcore.losses.dropout import draw_seed, shared_dropout
from bcmcore.losses.registry import register


@dataclass(frozen=True)
class Curriculum:
    """Grid size N(k): iCT's doubling schedule (s0, s1 intervals), or constant phases (BCM
    fine-tuning, LSUN)."""

    kind: Literal["ict", "phases"] = "ict"
    s0: int = 10  # initial number of intervals (iCT)
    s1: int = 1280  # final number of intervals (iCT)
    phases: tuple[tuple[int, int], ...] = ()  # (n_steps, n_intervals); the last phase runs forever

    def __post_init__(self):
        if self.kind == "ict" and not 1 <= self.s0 <= self.s1:
            raise ConfigError(
                f"loss.curriculum: expected 1 <= s0 <= s1, got s0={self.s0}, s1={self.s1}"
            )
        if self.kind == "phases":
            if not self.phases:
                raise ConfigError(
                    "loss.curriculum.phases: expected a non-empty list of [n_steps, n_intervals]"
                )
            for i, (steps, intervals) in enumerate(self.phases):
                if steps < 1 or intervals < 1:
                    raise ConfigError(
                        f"loss.curriculum.phases[{i}]: expected n_steps >= 1 and n_intervals >= 1, "
                        f"got {[steps, intervals]}"
                    )

    def num_points(self, step, total_steps):
        """Grid points at iteration `step` (intervals + 1), iCT Eq. 8 or the phase table."""
        if self.kind == "ict":
            return param.ict_num_points(step, total_steps, self.s0, self.s1)
        return param.phased_num_points(step, self.phases)

    def min_intervals(self):
        return self.s0 if self.kind == "ict" else min(n for _, n in self.phases)


@register("ict")
class ICTLoss:
    """iCT objective (BCM Eq. 6); works for kind "cm" and "bcm" models (target time u =
    sigma_min)."""

    @dataclass(frozen=True)
    class Config:
        curriculum: Curriculum = dataclasses.field(default_factory=Curriculum)
        P_mean: float = param.P_MEAN  # lognormal location of ln t (iCT)
        P_std: float = param.P_STD
        huber_c: float | None = None  # pseudo-Huber c; None: 0.00054 sqrt(D) from the batch
        # d / sqrt(D): the BCM authors' released code (BCM-iCT-torch, c = 0.06), docs/methods.md §3;
        # with huber_c: 0.06 it is their Huber form (RAdam alone is nearly blind to the scale)
        huber_per_sqrt_dim: bool = False
        sync_dropout: bool = True  # same dropout masks in student and teacher passes (iCT)

    model_kinds = ("cm", "bcm")

    def __init__(self, cfg, model_cfg):
        if model_cfg.kind not in self.model_kinds:
            raise ConfigError(
                f"loss.kind: {self.kind!r} trains model.kind in {list(self.model_kinds)}, "
                f"got model.kind {model_cfg.kind!r}"
            )
        self.cfg = cfg
        self.sigma_min, self.sigma_max = float(model_cfg.sigma_min), float(model_cfg.sigma_max)

    # -- shared pieces (BCT reuses them)
    # ---------------------------------------------------------------
    def grid(self, step, total_steps):
        """Karras grid (float64, CPU) with the curriculum's current number of points."""
        n_points = self.cfg.curriculum.num_points(step, total_steps)
        return param.karras_grid(n_points, self.sigma_min, self.sigma_max)

    def interval_mass(self, grid):
        """Discretised lognormal mass of each interval (grid[n], grid[n+1]) (iCT §3.5)."""
        return param.lognormal_interval_mass(grid, self.cfg.P_mean, self.cfg.P_std)

    def huber_c(self, x):
        return self.cfg.huber_c if self.cfg.huber_c is not None else param.huber_c(x[0].numel())

    def distance(self, a, b, x):
        """Per-sample pseudo-Huber d(a, b) (iCT §3.3), / sqrt(D) in the authors' form."""
        d = param.pseudo_huber(a, b, self.huber_c(x))
        return d / math.sqrt(x[0].numel()) if self.cfg.huber_per_sqrt_dim else d

    def ct_pair(self, model, x, y, t_next, t_cur, z, seed):
        """Student A = f(x + t_{n+1} z, t_{n+1}) and teacher B = f_sg(x + t_n z, t_n), same z, same
        masks."""
        return shared_dropout(  # teacher = online weights, train mode, no grad
            lambda: model(x + param.append_dims(t_next, x.ndim) * z, t_next, y=y),
            lambda: model(x + param.append_dims(t_cur, x.ndim) * z, t_cur, y=y),
            x.device,
            seed,
            self.cfg.sync_dropout,
        )

    # -- the objective
    # -----------------------------------------------------------------------------------
    def __call__(self, model, batch, step, total_steps):
        x, y = batch["x"], batch.get("y")
        grid = self.grid(step, total_steps)
        n = torch.multinomial(self.interval_mass(grid), x.shape[0], replacement=True)
        z = torch.randn_like(x)
        seed = draw_seed()
        t_next, t_cur = (
            grid[n + 1].to(x.device, torch.float32),
            grid[n].to(x.device, torch.float32),
        )
        weight = (1.0 / (grid[n + 1] - grid[n])).to(
            x.device, torch.float32
        )  # lambda(t_n) = 1/dt (iCT)
        a, b = self.ct_pair(model, x, y, t_next, t_cur, z, seed)
        loss_ct = weight * self.distance(a, b, x)  # BCM Eq. 6
        loss = loss_ct.mean()
        return {
            "loss": loss,
            "loss_ct": loss.detach(),
            "num_points": torch.tensor(float(len(grid)), device=x.device),
        }
