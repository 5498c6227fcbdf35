"""invertible Guided Consistency Training loss (docs/methods.md §3, §7): guided CT + inverse CT +
reconstruction.

One call returns all three terms, so a DDP wrapper would see one forward (docs/methods.md §7.4).
Guidance weights w follow the paper convention (w = 1: no guidance) throughout.
"""

import math
from dataclasses import dataclass

import torch

from bcmcore import param
from bcmcore.config import ConfigError, UserError
from bcmcore.losses.dropout import shared_dropout
from bcmcore.losses.registry import register


@dataclass(frozen=True)
class IGCTConfig:
    P_mean: float = -1.1  # lognormal t, generation branch (docs/methods.md §3)
    P_std: float = 2.0
    inv_P_mean: float = -1.1  # lognormal t, inversion branch
    inv_P_std: float = 2.0
    q: float = 2.0  # ECT r(t) mapping (param.ect_r)
    k: float = 8.0
    b: float = 1.0
    stage_steps: int | None = (
        None  # iterations per ECT stage (authors: 40 k); None = total_steps / n_stages
    )
    n_stages: int = 9  # CIFAR-10: 360 k iterations = stages 0..8
    huber_c: float = 0.03  # absolute pseudo-Huber c over the pixel sum (0.06 on ImageNet64)
    w_min: float = 1.0  # w ~ U[w_min, w_max], paper convention (docs/methods.md §7.2)
    w_max: float = 15.0
    guide_t_lo: float = 11.0  # guidance probability p(t) = p_max clip((t-lo)/(hi-lo), 0, 1)^gamma
    guide_t_hi: float = 14.3
    guide_gamma: float = 2.0
    guide_p_max: float = 0.9
    # reconstruction loss on steps with step % recon_every == 0 (docs/methods.md §7.4)
    recon_every: int = 10
    lambda_rec: float = 2e-5
    lambda_rec_schedule: tuple[
        tuple[int, float], ...
    ] = ()  # (from_step, lambda_rec) overrides, ImageNet64

    def __post_init__(self):
        checks = [
            ("P_std", self.P_std > 0),
            ("inv_P_std", self.inv_P_std > 0),
            ("q", self.q > 1),
            ("stage_steps", self.stage_steps is None or self.stage_steps >= 1),
            ("n_stages", self.n_stages >= 1),
            ("huber_c", self.huber_c > 0),
            ("w_min", 1 <= self.w_min <= self.w_max),
            ("guide_t_hi", self.guide_t_lo < self.guide_t_hi),
            ("guide_p_max", 0 <= self.guide_p_max <= 1),
            ("recon_every", self.recon_every >= 1),
            ("lambda_rec", self.lambda_rec >= 0),
        ]
        for key, ok in checks:
            if not ok:
                raise ConfigError(
                    f"loss.{key}: invalid value {getattr(self, key)!r} "
                    "(need P_std, huber_c > 0; q > 1; 1 <= w_min <= w_max; guide_t_lo < "
                    "guide_t_hi; "
                    "0 <= guide_p_max <= 1; recon_every, n_stages, stage_steps >= 1)"
                )


def guided_euler_target(x_t, y_img, x_tar, t, r, w):
    """One Euler step of the guided PF-ODE from t to r (docs/methods.md §7.2, Fig. 5).

    z = (x_t - y_img)/t (noise of the image actually noised: the unconditional estimate when y_img =
    x_src), z* = (x_t - x_tar)/t (conditional estimate for c_tar), eps_w = z + w (z* - z), x_r = x_t
    + (r - t) eps_w. With y_img = x_tar, or w = 1, this is the conditional CT pair x_r = x_tar + r
    z*.
    """
    t, r, w = (param.append_dims(v, x_t.ndim) for v in (t, r, w))
    z, z_star = (x_t - y_img) / t, (x_t - x_tar) / t
    return x_t + (r - t) * (z + w * (z_star - z))


def guidance_prob(t, cfg):
    """p(t) = p_max clip((t - t_lo)/(t_hi - t_lo), 0, 1)^gamma: guidance only in the high-noise
    window (docs/methods.md §7.2)."""
    ramp = ((t - cfg.guide_t_lo) / (cfg.guide_t_hi - cfg.guide_t_lo)).clamp(0, 1)
    return cfg.guide_p_max * ramp**cfg.guide_gamma


def reconstruction_loss(model, x_tar, y, c):
    """L_rec = d(D(N(x~, t_min, c), T, c, w=1), x~), x~ = x_tar + t_min eps; gradients into BOTH
    nets (docs/methods.md §7.4)."""
    x_noisy = x_tar + model.sigma_min * torch.randn_like(x_tar)
    z_lat = model.noiser(x_noisy, model.sigma_min, y)
    return param.pseudo_huber(model.denoiser(z_lat, model.sigma_max, y, 1.0), x_noisy, c)


@register("igct")
class IGCTLoss:
    Config = IGCTConfig
    skip_idle_target = True  # False runs the denoiser target pass even when no sample has r > 0

    def __init__(self, cfg, model_cfg):
        if model_cfg is not None and model_cfg.kind != "igct":
            raise ConfigError(
                f"loss.kind: 'igct' trains model.kind 'igct' (noiser + guided denoiser), "
                f"got model.kind {model_cfg.kind!r}"
            )
        self.cfg = cfg

    def stage(self, step, total_steps):
        """ECT stage s = step // stage length (Delta t halves every stage; docs/methods.md §3)."""
        n = self.cfg.stage_steps or max(1, math.ceil(total_steps / self.cfg.n_stages))
        return step // n

    def lambda_rec(self, step):
        lam = self.cfg.lambda_rec
        for from_step, value in sorted(self.cfg.lambda_rec_schedule):
            if step >= from_step:
                lam = value
        return lam

    def _t_r(self, n, P_mean, P_std, stage, model, device):
        """t ~ lognormal clamped to [t_min, T] (t < t_min is meaningless under the boundary rule); r
        = r_s(t) < t."""
        t = torch.exp(P_mean + P_std * torch.randn(n, device=device)).clamp(
            model.sigma_min, model.sigma_max
        )
        r = param.ect_r(t, stage, self.cfg.q, self.cfg.k, self.cfg.b)
        # r below sigma_min: the boundary condition makes the target the clean image itself, as for
        # ECT's r = 0
        return t, torch.where(r >= model.sigma_min, r, torch.zeros_like(r))

    def __call__(self, model, batch, step, total_steps):
        cfg, c = self.cfg, self.cfg.huber_c
        x_tar, y, x_src = batch["x"], batch.get("y"), batch.get("x_src")
        if y is None:
            raise UserError(
                "loss 'igct' needs class labels: the dataset has none (batch 'y' is None)"
            )
        if x_src is None:
            raise UserError(
                "loss 'igct' needs paired source images (batch 'x_src'): set data.paired: true"
            )
        n, dev, stage = x_tar.shape[0], x_tar.device, self.stage(step, total_steps)

        # Inverse consistency (noiser), swapped levels: input at r' = max(r, t_min), target at t
        # (docs/methods.md §7.3).
        t, r = self._t_r(n, cfg.inv_P_mean, cfg.inv_P_std, stage, model, dev)
        t_in = r.clamp_min(model.sigma_min)
        eps = torch.randn_like(x_tar)  # shared by both levels
        noised = lambda s: x_tar + param.append_dims(s, x_tar.ndim) * eps  # noqa: E731
        online, target = shared_dropout(
            lambda: model.noiser(noised(t_in), t_in, y), lambda: model.noiser(noised(t), t, y), dev
        )
        target = torch.nan_to_num(target)  # as the authors do
        l_inv = (
            model.sigma_data / model.sigma_max * (t - t_in) * param.pseudo_huber(online, target, c)
        )

        # Guided consistency (denoiser): source x_src noised w.p. p(t), target by the guided Euler
        # step (docs/methods.md §7.2).
        t, r = self._t_r(n, cfg.P_mean, cfg.P_std, stage, model, dev)
        w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(n, device=dev)
        guided = torch.rand(n, device=dev) < guidance_prob(t, cfg)
        y_img = torch.where(param.append_dims(guided, x_tar.ndim), x_src, x_tar)
        x_t = y_img + param.append_dims(t, x_tar.ndim) * torch.randn_like(x_tar)
        x_r = guided_euler_target(x_t, y_img, x_tar, t, r, w)
        # r = 0 (all of stage 0, small t later): no ODE step to take, the target is the clean image
        # that was noised. The target pass runs for the batch (at sigma_min where r = 0, to keep one
        # batch shape) only if some sample has r > 0; stage 0 skips it, as the authors do.
        # (one host sync per step for the test)
        step_pass = not self.skip_idle_target or bool((r > 0).any())
        online, target = shared_dropout(
            lambda: model.denoiser(x_t, t, y, w),
            (lambda: model.denoiser(x_r, r.clamp_min(model.sigma_min), y, w))
            if step_pass
            else None,
            dev,
        )
        if target is None:
            target = y_img
        else:
            target = torch.where(
                param.append_dims(r > 0, x_tar.ndim), torch.nan_to_num(target), y_img
            )
        l_gct = param.pseudo_huber(online, target, c) / (t - r)  # ECT weight 1/(t - r)

        total = l_inv + l_gct
        out = {
            "inv": l_inv.mean().detach(),
            "gct": l_gct.mean().detach(),
            "stage": torch.tensor(float(stage)),
            "guided_frac": guided.float().mean(),
        }
        if step % cfg.recon_every == 0:  # docs/methods.md §7.4: every k-th step only
            l_rec = reconstruction_loss(model, x_tar, y, c)
            total = total + self.lambda_rec(step) * l_rec
            out["rec"] = l_rec.mean().detach()
        out["loss"] = total.mean()
        return out
