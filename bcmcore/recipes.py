"""Named time-step recipes: generation recipes (one `sampling.SAMPLERS` entry each) and, apart from
them, inversion / editing schedules (docs/methods.md §11).

A recipe states its interior levels as published; its ends are the model's own T = sigma_max and
eps = sigma_min, and Karras-grid recipes are built on the model's sigmas, when it is resolved for a
model (`Recipe.for_model`). A model trained with another sigma_max gets its own grid everywhere:
`bcm sample`, `bcm invert` and the eval sweep resolve the same way.

`build` is the one rule that turns a sampler + times (+ zigzag pairs) into a recipe, for every
front door: `bcm sample --sampler/--steps/--zigzag/--num-steps`, a sweep spec's
`{sampler, times, pairs, steps}` and the workflow's `grid` (docs/interfaces.md, "One rule for
sampler times"): generation ends at eps.
"""

from dataclasses import dataclass, replace

from bcmcore import param
from bcmcore.config import UserError

T, EPS = "T", "eps"  # placeholders: the model's sigma_max and sigma_min


@dataclass(frozen=True)
class Recipe:
    """Times and the method that walks them. method: a `sampling.SAMPLERS` name (generation,
    RECIPES), or an inversion / editing method: invert | inpaint | cm_inpaint | cm_edit
    (SCHEDULES)."""

    method: str
    times: tuple = ()  # ancestral / multistep / heun / inversion times (both ends included)
    pairs: tuple = ()  # zigzag rounds (eps_i, t_i)
    gen_times: tuple = ()  # inpainting: generation times after the inversion
    karras: tuple = ()  # (n_points, indices, zero): times from the model's decreasing Karras grid
    steps: int = 1  # igct: denoiser calls (1 or 2)
    note: str = ""

    def for_model(self, model):
        """This recipe with T / eps and any Karras grid resolved on the model's sigmas."""
        lo, hi = float(model.sigma_min), float(model.sigma_max)

        def ends(v):
            return tuple(hi if t == T else lo if t == EPS else float(t) for t in v)

        times = ends(self.times)
        if len(times) > 1 and self.times[-1] == EPS and times[-2] <= lo:
            times = times[:-1]  # `build` appended eps to times that already reached it
        if self.karras:  # decreasing Karras grid T .. eps (EDM Eq. 5), optionally then EDM's 0
            n, idx, zero = self.karras
            grid = param.karras_grid(n, lo, hi).flip(0).tolist() + ([0.0] if zero else [])
            times = tuple(grid[i] for i in idx) if idx else tuple(grid)
        return replace(self, times=times, gen_times=ends(self.gen_times), karras=())


def _karras(n, idx=(), zero=False, method="multistep"):
    return Recipe(method, karras=(n, tuple(idx), zero))


RECIPES = {
    # ImageNet-64 BCM / BCM-deep (the authors' sampling script; docs/methods.md §11)
    "imagenet64-nfe1": Recipe("onestep", (T, EPS)),
    "imagenet64-nfe2": Recipe("ancestral", (T, 2.4, EPS)),
    "imagenet64-nfe3": Recipe("zigzag", (T, EPS), ((0.1, 1.2),)),
    "imagenet64-nfe4": Recipe("combined", (T, 3.0, EPS), ((0.12, 0.4),)),
    # iCT ImageNet-64 2-step of the authors' script; CM-paper multistep index schedules. In the CM
    # code the last index (= eps) only ends the loop (noise sqrt(eps^2 - eps^2) = 0), so "0,22,39"
    # is 2 NFE.
    "imagenet64-ict-nfe2": Recipe("multistep", (T, 0.7)),
    "cd-imagenet64-nfe2": _karras(40, (0, 22)),
    "ct-imagenet64-nfe2": _karras(201, (0, 106)),
    "ct-lsun256-nfe2": _karras(151, (0, 67)),
    "cd-lsun256-l2-nfe2": _karras(40, (0, 18)),  # openai's LSUN Bedroom-256 CD 2-step scripts
    "cd-lsun256-lpips-nfe2": _karras(40, (0, 17)),
    # EDM deterministic Heun: 18 steps = NFE 35 (CIFAR-10), 40 steps = NFE 79 (ImageNet-64)
    "edm-18": _karras(18, zero=True, method="heun"),
    "edm-40": _karras(40, zero=True, method="heun"),
    # iGCT guided generation: 1 step, or 2 with ECT's intermediate level (docs/methods.md §9)
    "igct-1": Recipe("igct", steps=1),
    "igct-2": Recipe("igct", steps=2),
    # Demo (8x8 digits / toy): reasonable untuned values, in the spirit of the ImageNet ones
    "demo-nfe1": Recipe("onestep", (T, EPS), note="untuned"),
    "demo-nfe2": Recipe("ancestral", (T, 1.0, EPS), note="untuned"),
    "demo-nfe3": Recipe("zigzag", (T, EPS), ((0.1, 1.0),), note="untuned"),
    "demo-nfe4": Recipe("combined", (T, 2.0, EPS), ((0.1, 0.5),), note="untuned"),
    "demo-multistep2": Recipe("multistep", (T, 0.8), note="untuned"),
    # The demo's BCM networks (8x8 digits), times from `bcm tune` (docs/sampler_times.md §3). They
    # invert from small t now, so the zigzag rounds start at eps_i ~ 0.2 (16x16 digits: 0.95).
    "digits-bcm_ft-nfe2": Recipe("ancestral", (T, 1.19, EPS), note="bcm tune"),
    "digits-bcm_ft-nfe3": Recipe("zigzag", (T, EPS), ((0.167, 1.0),), note="bcm tune"),
    "digits-bcm_ft-nfe4": Recipe("combined", (T, 1.19, EPS), ((0.167, 0.25),), note="bcm tune"),
    "digits-bcm_scratch-nfe2": Recipe("ancestral", (T, 0.649, EPS), note="bcm tune"),
    "digits-bcm_scratch-nfe3": Recipe("zigzag", (T, EPS), ((0.218, 1.0),), note="bcm tune"),
    "digits-bcm_scratch-nfe4": Recipe(
        "combined", (T, 0.649, EPS), ((0.218, 1.0),), note="bcm tune"
    ),
}

SCHEDULES = {
    # BCM Alg. 5 inversion (ImageNet-64: t_0 = 0.07)
    "imagenet64-invert-nfe1": Recipe("invert", (0.07, T)),
    "imagenet64-invert-nfe2": Recipe("invert", (0.07, 15.0, T)),
    # CM zero-shot inpainting baselines: every point of an n-point Karras grid (CIFAR 18, FFHQ 24,
    # LSUN 40)
    "cm-inpaint-18": _karras(18, method="cm_inpaint"),
    "cm-inpaint-24": _karras(24, method="cm_inpaint"),
    "cm-inpaint-40": _karras(40, method="cm_inpaint"),
    # CM Alg. 4 with a linear operator (super-resolution, colorization): the Karras grid of the CM
    # code's LSUN editing runs, and an untuned 3-level demo schedule
    "cm-edit-40": _karras(40, method="cm_edit"),
    "demo-cm-edit": Recipe("cm_edit", (T, 1.0, 0.3), note="untuned"),
    "demo-invert-nfe2": Recipe("invert", (0.07, 2.0, T), note="untuned"),
    "demo-inpaint": Recipe("inpaint", (0.05, 0.5, 2.0), gen_times=(2.0, EPS), note="untuned"),
}


def describe(table):
    """One line per named recipe / schedule (`bcm sample | invert | edit --help`): name, sampler,
    times (T, eps: the model's own), zigzag rounds, note."""

    def num(v):
        return v if isinstance(v, str) else f"{v:g}"

    lines = []
    for name, r in sorted(table.items()):
        if r.karras:
            n, idx, zero = r.karras
            what = f"{n}-point Karras grid" + (f" at {list(idx)}" if idx else "")
            what += ", then 0" if zero else ""
        elif r.method == "igct":
            what = f"{r.steps} guided denoiser call" + ("s" if r.steps > 1 else "")
        elif r.method == "multistep":
            what = "levels " + ", ".join(num(t) for t in r.times) + ", each denoised to eps"
        else:
            what = " -> ".join(num(t) for t in r.times)
        what += "".join(f", zigzag {num(e)}:{num(t)}" for e, t in r.pairs)
        what += f"; generate {' -> '.join(num(t) for t in r.gen_times)}" if r.gen_times else ""
        lines.append(f"  {name:26s}{r.method:11s}{what}" + (f"  ({r.note})" if r.note else ""))
    return "\n".join(lines)


def _named(table, name, what, other, hint):
    """table[name], or a UserError naming the known ones (and `hint` when `other` has the name)."""
    if name not in table:
        raise UserError(
            f"--recipe: unknown {what} {name!r}"
            + (hint if name in other else "")
            + f" (known: {', '.join(sorted(table))})"
        )
    return table[name]


def get_recipe(name):
    """A generation recipe by name (UserError naming the known ones, and the schedules apart)."""
    hint = " (an inversion/editing schedule: use it with bcm invert / edit)"
    return _named(RECIPES, name, "generation recipe", SCHEDULES, hint)


def get_schedule(name):
    """An inversion / editing schedule by name."""
    hint = " (a generation recipe: use it with bcm sample)"
    return _named(SCHEDULES, name, "inversion/editing schedule", RECIPES, hint)


# ------------------------------------------------------------------------------------------------
# sampler + times (+ pairs) -> a recipe: one rule for the CLI, the sweep spec and the workflow

HEUN_POINTS = 18  # EDM's CIFAR-10 Heun grid (edm-18): 18 points, NFE 35
IGCT_STEPS = 1  # iGCT's one guided denoiser call
CLI_KEYS = {"times": "--steps", "pairs": "--zigzag", "steps": "--num-steps"}
SPEC_KEYS = {"times": "times", "pairs": "pairs", "steps": "steps"}


def default_sampler(kind):
    """The sampler a network kind generates with when none is named."""
    return {"edm": "heun", "igct": "igct"}.get(kind, "onestep")


def build(sampler, times=(), pairs=(), steps=None, kind=None, keys=CLI_KEYS):
    """The Recipe of a sampler with explicit times / pairs / steps. Generation always ends at eps:

    - onestep: T -> eps (no times). zigzag: T -> eps, then the rounds (BCM Alg. 3; pairs only).
    - ancestral, combined: down `times`, then to eps (BCM Alg. 2 / 4): [80, 2.4] is 80, 2.4, eps.
    - multistep: CM Alg. 1 at the levels `times` (each step denoises to eps).
    - heun: EDM Alg. 1 along `times`, then EDM's final 0 (an Euler step); without times a
      `steps`-point Karras grid (EDM Eq. 5, default 18) and 0.
    - igct: `steps` guided denoiser calls (1 or 2, default 1; docs/methods.md §9).

    kind: the model kind the recipe must run on (None: not checked). keys: the names of times,
    pairs and steps in error messages (the CLI's flags or the spec's keys)."""
    from bcmcore import sampling

    s = sampling.get_sampler(sampler, keys.get("sampler", "--sampler"))
    if kind is not None and kind not in s.kinds:
        raise UserError(
            f"sampler {sampler!r} runs on kind {' or '.join(s.kinds)}, not on this {kind!r} model"
            f" (its default sampler: {default_sampler(kind)})"
        )
    times, pairs = tuple(times or ()), tuple(tuple(p) for p in pairs or ())
    if sampler not in ("heun", "igct") and steps is not None:
        raise UserError(f"{keys['steps']}: only heun (grid points) and igct (1 or 2) take it")
    if sampler in ("onestep", "zigzag", "igct") and times:
        raise UserError(f"{keys['times']}: sampler {sampler} takes no times (it starts at T)")
    if s.times and sampler != "heun" and not times:
        raise UserError(f"{keys['times']}: sampler {sampler} needs time steps, e.g. 80,2.4")
    if pairs and not s.pairs:
        raise UserError(f"{keys['pairs']}: sampler {sampler} takes no zigzag rounds")
    if s.pairs and not pairs:
        raise UserError(
            f"{keys['pairs']}: sampler {sampler} needs zigzag rounds eps:t, e.g. 0.1:1.2"
        )
    if sampler == "igct":
        steps = IGCT_STEPS if steps is None else steps
        if steps not in (1, 2):
            raise UserError(f"{keys['steps']}: igct takes 1 or 2 denoiser calls, got {steps}")
        return Recipe("igct", steps=steps)
    if sampler == "heun":
        if times and steps is not None:
            raise UserError(f"heun: give either {keys['times']} or {keys['steps']}, not both")
        if not times:  # EDM Heun on the model's Karras grid, then 0
            steps = HEUN_POINTS if steps is None else steps
            if steps < 2:
                raise UserError(f"{keys['steps']}: a Karras grid needs >= 2 points, got {steps}")
            return Recipe("heun", karras=(steps, (), True))
        return Recipe("heun", times if times[-1] in (0, 0.0) else times + (0.0,))
    if sampler in ("onestep", "zigzag"):
        return Recipe(sampler, (T, EPS), pairs)
    if sampler in ("ancestral", "combined") and times[-1] != EPS:
        times += (EPS,)  # ends at eps; `Recipe.for_model` drops it if times already reached eps
    return Recipe(sampler, times, pairs)
