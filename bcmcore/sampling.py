"""Generation with consistency models and the EDM baseline; per-sample seeds; time-step recipes.

Every step is one network call x <- f(x, t_from, t_to) (BCM §3.3). Every routine checks its schedule
and the model kind before the first network call, counts its network calls and returns (result,
nfe). Randomness comes only from a per-sample generator stream (`SeededRNG`), so sample i depends on
seed i alone, not on the batch size or on how seeds are split across GPUs.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bcmcore import param
from bcmcore.config import UserError
from bcmcore.nets.facts import check_kind

# ----------------------------------------------------------------------------------------------
# Per-sample randomness


class SeededRNG:
    """One torch.Generator per sample (on CPU, so CPU and GPU runs draw the same numbers)."""

    def __init__(self, seeds, device="cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.gens = [torch.Generator().manual_seed(s) for s in self.seeds]

    def __len__(self):
        return len(self.gens)

    def randn(self, shape, dtype=torch.float32):
        """[B, *shape] standard normal; row i is the next draw of sample i's own stream."""
        z = torch.stack(
            [torch.randn(tuple(shape), generator=g, dtype=torch.float64) for g in self.gens]
        )
        return z.to(device=self.device, dtype=dtype)


def seeded_randn(seeds, shape, device="cpu"):
    """[len(seeds), *shape] normal draws, row i from a generator seeded with seeds[i] (shape: one
    sample)."""
    return SeededRNG(seeds, device).randn(shape)


LABEL_SALT = 0x1ABE1  # per-seed label stream, independent of the noise stream of the same seed


def seeded_labels(seeds, num_classes, device="cpu"):
    """[B] uniform class labels, label i from its own seed (salted so it is independent of the
    noise)."""
    ys = [np.random.default_rng([LABEL_SALT, int(s)]).integers(num_classes) for s in seeds]
    return torch.as_tensor(np.asarray(ys, np.int64), device=device)


# ----------------------------------------------------------------------------------------------
# Checks (all run before the first network call)


def check_times(model, times, name, direction, min_len=2, allow_final_zero=False):
    """times: floats, strictly monotone in `direction` ('decreasing'|'increasing'), within
    [sigma_min, sigma_max]."""
    times = [float(t) for t in times]
    lo, hi = model.sigma_min, model.sigma_max
    if len(times) < min_len:
        raise UserError(f"{name}: expected at least {min_len} time steps, got {times}")
    for i, t in enumerate(times):
        if allow_final_zero and i == len(times) - 1 and t == 0.0:
            continue
        if not (math.isfinite(t) and lo * (1 - 1e-6) <= t <= hi * (1 + 1e-6)):
            raise UserError(
                f"{name}: time {t:g} is outside [sigma_min, sigma_max] = [{lo:g}, {hi:g}] "
                f"(schedule {times})"
            )
    sign = -1 if direction == "decreasing" else 1
    if any(sign * (b - a) <= 0 for a, b in zip(times, times[1:])):
        raise UserError(f"{name}: expected strictly {direction} times, got {times}")
    return times


def check_pairs(model, pairs, name):
    """Zigzag rounds (eps_i, t_i): the small injected noise eps_i is amplified up to t_i > eps_i
    (Eq. 11)."""
    pairs = [tuple(float(v) for v in p) for p in pairs]
    for p in pairs:
        if len(p) != 2:
            raise UserError(f"{name}: expected (eps_i, t_i) pairs, got {p}")
        check_times(model, p, f"{name} round {p}", "increasing")
    return pairs


# ----------------------------------------------------------------------------------------------
# Network calls with per-sample times, the class label, and an NFE count


class Calls:
    """Calls the model with [B] time tensors and label y; `n` counts network evaluations (the
    NFE)."""

    def __init__(self, model, y=None):
        self.model, self.y, self.n = model, y, 0

    def _t(self, x, t):
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        return torch.full((x.shape[0],), float(t), dtype=dt, device=x.device)

    def f(self, x, t, u=None):
        """Consistency function f(x, t, u); u None = sigma_min (a CM model only takes u =
        sigma_min)."""
        if self.model.kind == "cm" and u is not None and abs(u - self.model.sigma_min) > 1e-12:
            raise UserError(f"a CM model maps only to u = sigma_min, asked for u = {u:g}")
        self.n += 1
        if self.model.kind == "cm" or u is None:
            return self.model(x, self._t(x, t), None, y=self.y)
        return self.model(x, self._t(x, t), self._t(x, u), y=self.y)

    def D(self, x, sigma, w=1.0):
        """EDM denoiser with classifier-free guidance D_w = D_null + w (D_c - D_null) (paper
        convention)."""
        s = self._t(x, sigma)
        self.n += 1
        d_c = self.model(x, s, self.y)
        if w == 1.0:
            return d_c
        self.n += 1
        d_null = self.model(x, s, torch.full_like(self.y, -1))
        return d_null + w * (d_c - d_null)


# ----------------------------------------------------------------------------------------------
# Consistency-model samplers


@torch.no_grad()
def onestep(model, x_T, y=None):
    """1-step generation x = f(x_T, T, eps) (CM; BCM Alg. 2 with one interval)."""
    check_kind(model, ("cm", "bcm"), "onestep")
    net = Calls(model, y)
    return net.f(x_T, model.sigma_max), net.n


@torch.no_grad()
def ancestral(model, x, times, y=None):
    """BCM Alg. 2: x <- f(x, t_{i-1}, t_i) down a decreasing schedule starting at x's level
    times[0]."""
    times = check_times(model, times, "ancestral times", "decreasing")
    # a CM can only map to sigma_min, i.e. run the single interval T -> eps
    check_kind(model, ("cm", "bcm") if times[1:] == [model.sigma_min] else ("bcm",), "ancestral")
    net = Calls(model, y)
    for t_from, t_to in zip(times, times[1:]):
        x = net.f(x, t_from, t_to)
    return x, net.n


def _zigzag_rounds(net, x, pairs, rng, sigma_min):
    for (
        eps_i,
        t_i,
    ) in pairs:  # BCM Eq. 11: small noise eps_i z, amplified by the network eps_i -> t_i
        z = rng.randn(x.shape[1:], dtype=x.dtype).to(x.device)
        x = net.f(net.f(x + eps_i * z, eps_i, t_i), t_i, sigma_min)
    return x


@torch.no_grad()
def combined(model, x_T, times, pairs, rng, y=None):
    """BCM Alg. 4: ancestral T = times[0] > ... > times[-1] = eps, then zigzag rounds (eps_i,
    t_i)."""
    check_kind(model, ("bcm",), "combined")
    times = check_times(model, times, "combined times", "decreasing")
    if abs(times[-1] - model.sigma_min) > 1e-9:
        raise UserError(
            f"combined times: the ancestral phase must end at sigma_min={model.sigma_min:g}, "
            f"got {times}"
        )
    pairs = check_pairs(model, pairs, "zigzag")
    x, n = ancestral(model, x_T, times, y)
    net = Calls(model, y)
    return _zigzag_rounds(net, x, pairs, rng, model.sigma_min), n + net.n


@torch.no_grad()
def zigzag(model, x_T, pairs, rng, y=None):
    """BCM Alg. 3: x = f(x_T, T, eps), then x <- f(f(x + eps_i z, eps_i, t_i), t_i, eps) per
    round."""
    check_kind(model, ("bcm",), "zigzag")
    return combined(model, x_T, [model.sigma_max, model.sigma_min], pairs, rng, y)


@torch.no_grad()
def cm_multistep(model, x_T, times, rng, y=None, clamp=False):
    """CM Alg. 1: x = f(x_T, T); for tau: x <- f(x + sqrt(tau^2 - eps^2) z, tau). clamp: official CM
    code."""
    check_kind(model, ("cm", "bcm"), "cm_multistep")
    times = check_times(model, times, "multistep times", "decreasing", min_len=1)
    net, eps = Calls(model, y), model.sigma_min
    x = net.f(x_T, times[0])
    for tau in times[1:]:
        if clamp:
            x = x.clamp(-1, 1)
        z = rng.randn(x.shape[1:], dtype=x.dtype).to(x.device)
        x = net.f(x + math.sqrt(tau**2 - eps**2) * z, tau)
    return (x.clamp(-1, 1) if clamp else x), net.n


# ----------------------------------------------------------------------------------------------
# EDM baseline: deterministic Heun ODE solver (EDM Alg. 1), either direction


def heun_ode(net, x, times, w=1.0):
    """Heun steps of dx/dt = (x - D_w(x, t)) / t along `times` (either direction); a final 0 is an
    Euler step."""
    for t_cur, t_next in zip(times, times[1:]):
        d = (x - net.D(x, t_cur, w)) / t_cur  # EDM Alg. 1, line 4
        x_next = x + (t_next - t_cur) * d  # Euler step, line 5
        if t_next != 0:  # 2nd-order correction, lines 6-8
            d_next = (x_next - net.D(x_next, t_next, w)) / t_next
            x_next = x + (t_next - t_cur) * 0.5 * (d + d_next)
        x = x_next
    return x


def check_guidance(y, w, routine):
    if w != 1.0 and y is None:
        raise UserError(
            f"{routine}: guidance weight w={w:g} needs class labels (w = 1 means no guidance)"
        )


@torch.no_grad()
def heun(model, x_T, times, y=None, w=1.0):
    """EDM Alg. 1 (deterministic): decreasing times from x_T's level; a trailing 0 ends with an
    Euler step."""
    check_kind(model, ("edm",), "heun")
    times = check_times(model, times, "heun times", "decreasing", allow_final_zero=True)
    check_guidance(y, w, "heun")
    net = Calls(model, y)
    return heun_ode(net, x_T, times, w), net.n


# ----------------------------------------------------------------------------------------------
# The registry: every generation routine, read by `bcm sample`, the eval spec and the sweep


@dataclass(frozen=True)
class Sampler:
    """A generation routine run(model, z, recipe, rng, y, w, clamp) -> (x, nfe), z unit noise."""

    name: str
    run: Callable
    kinds: tuple  # model kinds it takes
    times: bool = False  # needs recipe.times
    pairs: bool = False  # needs recipe.pairs (zigzag rounds)
    guided: bool = False  # takes a guidance weight w != 1


SAMPLERS: dict[str, Sampler] = {}


def register(name, kinds, times=False, pairs=False, guided=False):
    """Decorator adding a generation routine to SAMPLERS: the CLI choices, the spec validation
    and the sweep all read it."""

    def deco(run):
        SAMPLERS[name] = Sampler(name, run, tuple(kinds), times, pairs, guided)
        return run

    return deco


def get_sampler(name, where="sampler"):
    if name not in SAMPLERS:
        raise UserError(f"{where}: unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
    return SAMPLERS[name]


def karras_times(n_points, sigma_min, sigma_max, zero=False):
    """Decreasing Karras grid T .. eps (EDM Eq. 5) on a model's sigmas, optionally followed by
    EDM's final 0."""
    times = param.karras_grid(n_points, sigma_min, sigma_max).flip(0).tolist()
    return times + [0.0] if zero else times


def generate(model, recipe, z, rng, y=None, w=1.0, clamp=None):
    """Sample from unit noise z [B, ...] with a recipe (bcmcore.recipes) resolved on the model's
    sigmas; x_T = times[0] z (T for all but custom starts). clamp: clip to [-1, 1] (None: each
    sampler's own rule: multistep no, as in the CM paper; igct yes for images)."""
    s = get_sampler(recipe.method)
    if w != 1.0 and not s.guided:
        guided = ", ".join(n for n, v in SAMPLERS.items() if v.guided)
        raise UserError(f"guidance w={w:g} needs a guided sampler ({guided}), not {s.name!r}")
    return s.run(model, z, recipe.for_model(model), rng, y, w, clamp)


def _times(model, recipe):
    return list(recipe.times) or [model.sigma_max, model.sigma_min]


register("onestep", ("cm", "bcm"))(
    lambda model, z, r, rng, y, w, clamp: onestep(model, model.sigma_max * z, y)
)
register("ancestral", ("cm", "bcm"), times=True)(
    lambda model, z, r, rng, y, w, clamp: ancestral(
        model, _times(model, r)[0] * z, _times(model, r), y
    )
)
register("zigzag", ("bcm",), pairs=True)(
    lambda model, z, r, rng, y, w, clamp: zigzag(model, model.sigma_max * z, r.pairs, rng, y)
)
register("combined", ("bcm",), times=True, pairs=True)(
    lambda model, z, r, rng, y, w, clamp: combined(
        model, _times(model, r)[0] * z, _times(model, r), r.pairs, rng, y
    )
)
register("multistep", ("cm", "bcm"), times=True)(
    lambda model, z, r, rng, y, w, clamp: cm_multistep(
        model, _times(model, r)[0] * z, _times(model, r), rng, y, clamp=bool(clamp)
    )
)
register("heun", ("edm",), times=True, guided=True)(
    lambda model, z, r, rng, y, w, clamp: heun(
        model, _times(model, r)[0] * z, _times(model, r), y, w
    )
)

T_MID = 0.821  # ECT's CIFAR-10 intermediate level for iGCT's 2-step sampling (docs/methods.md §9)


@register("igct", ("igct",), guided=True)
@torch.no_grad()
def igct(model, z, recipe, rng, y=None, w=1.0, clamp=None, t_mid=T_MID):
    """iGCT guided generation x = clip(D(T z, T, c, w)); recipe.steps = 2 adds
    x <- clip(D(x + t_mid z', t_mid, c, w)) (docs/methods.md §9). NFE = steps. clip after every
    denoiser call (clamp None: for images, not for toy vectors)."""
    from bcmcore.nets.facts import class_labels, is_vector
    from bcmcore.nets.igct import check_w

    check_kind(model, ("igct",), "igct sampler")
    check_w(w)
    steps = recipe.steps
    if steps not in (1, 2):
        raise UserError(f"igct sampler: steps must be 1 or 2, got {steps}")
    if not model.sigma_min < t_mid < model.sigma_max:
        raise UserError(
            f"igct sampler: t_mid must lie in ({model.sigma_min}, {model.sigma_max}), got {t_mid}"
        )
    y = class_labels(model, y, z.shape[0], z.device)
    clamp = not is_vector(model) if clamp is None else clamp
    clip = (lambda v: v.clamp(-1, 1)) if clamp else (lambda v: v)
    x = clip(model.denoiser(model.sigma_max * z, model.sigma_max, y, w))
    if steps == 2:
        x = clip(model.denoiser(x + t_mid * rng.randn(z.shape[1:]).to(z), t_mid, y, w))
    return x, steps
