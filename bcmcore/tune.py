"""Choosing a sampler's time steps by measurement (`bcm tune`).

The BCM paper tunes its 3-4 step schedules per model (App. C.2; CM used ternary search): the
interior times of ancestral sampling (Alg. 2), the zigzag rounds (eps_i, t_i) (Alg. 3, Eq. 11) and
both for the combination (Alg. 4). Here a deterministic pattern search in log-time does it: from a
starting recipe, try each time multiplied and divided by a factor r, keep any move that lowers the
score, and shrink r -> sqrt(r) when no move helps. Scores are FID (demo or Inception features) for
images and the energy distance for vector (2-D) data, on seeds disjoint from the sweep's (default
offset 10^6), so the sweep's own numbers stay a held-out measurement. Every evaluation is a row of
the search table.
"""

import csv
import dataclasses
import json
import math
from pathlib import Path

import torch

from bcmcore import sampling
from bcmcore.config import UserError
from bcmcore.paths import inside
from bcmcore.recipes import Recipe

TUNABLE = ("ancestral", "zigzag", "combined", "multistep")
SEED_OFFSET = 1_000_000  # tuning seeds start here (+ the spec's seed): disjoint from the sweep's


# --------------------------------------------------------------------------------------------------
# a recipe's free times <-> a parameter vector


def free_times(recipe):
    """The times a search may move: interior ancestral times (the ends T and eps stay), the
    multistep re-noising levels, and every zigzag eps_i, t_i."""
    times = list(recipe.times)
    if recipe.method in ("ancestral", "combined"):
        inner = times[1:-1]
    elif recipe.method == "multistep":
        inner = times[1:]
    else:
        inner = []
    return inner + [v for p in recipe.pairs for v in p]


def with_times(recipe, params):
    """The recipe with its free times replaced by `params` (the inverse of `free_times`)."""
    params = [float(v) for v in params]
    times, k = list(recipe.times), 0
    if recipe.method in ("ancestral", "combined"):
        k = len(times) - 2
        times = [times[0], *params[:k], times[-1]]
    elif recipe.method == "multistep":
        k = len(times) - 1
        times = [times[0], *params[:k]]
    rest = params[k:]
    pairs = tuple((rest[2 * i], rest[2 * i + 1]) for i in range(len(recipe.pairs)))
    return dataclasses.replace(recipe, times=tuple(times), pairs=pairs, note="tuned")


def feasible(recipe, sigma_min, sigma_max):
    """Times inside (sigma_min, sigma_max), ancestral times strictly decreasing, eps_i < t_i."""
    if any(not sigma_min < v < sigma_max for v in free_times(recipe)):
        return False
    t = list(recipe.times)
    if any(b >= a for a, b in zip(t, t[1:])):
        return False
    return all(e < u for e, u in recipe.pairs)


def _round(v, digits=3):
    """3 significant digits: readable recipes, and a cache key that stops the search re-scoring
    the same schedule."""
    return float(f"{v:.{digits}g}")


# --------------------------------------------------------------------------------------------------
# the search


def pattern_search(
    score, start, sigma_min, sigma_max, budget=30, factor=2.0, min_factor=1.08, warm=()
):
    """Minimise score(recipe) -> (value, nfe) over the recipe's free times in log space.

    Deterministic: coordinates are tried in order, x * r before x / r; the first improving move is
    kept and the sweep over coordinates repeats until none improves, then r -> sqrt(r). Stops after
    `budget` scored schedules or when r < min_factor. `warm`: further starting recipes of the same
    shape (scored after `start`; the search begins at the best). Returns (best recipe, best value,
    rows).
    """
    check_tunable(start)
    rows, cache = [], {}

    def evaluate(recipe, move):
        key = (tuple(recipe.times), tuple(recipe.pairs))
        if key not in cache:
            value, nfe = score(recipe)
            cache[key] = value
            rows.append(
                {
                    "eval": len(rows),
                    "move": move,
                    "sampler": recipe.method,
                    "nfe": nfe,
                    "times": ",".join(f"{t:g}" for t in recipe.times),
                    "pairs": ",".join(f"{e:g}:{t:g}" for e, t in recipe.pairs),
                    "score": value,
                }
            )
        return cache[key]

    start = with_times(start, [_round(v) for v in free_times(start)])
    if not feasible(start, sigma_min, sigma_max):
        raise UserError(
            f"tune: starting recipe {start} is outside (sigma_min, sigma_max) or unordered"
        )
    best, best_val = start, evaluate(start, "start")
    for k, w in enumerate(warm):
        w = with_times(w, [_round(v) for v in free_times(w)])
        if len(free_times(w)) == len(free_times(start)) and feasible(w, sigma_min, sigma_max):
            val = evaluate(w, f"warm start {k}")
            if val < best_val:
                best, best_val = w, val
    r = factor
    while r >= min_factor and len(cache) < budget:
        improved = False
        params = free_times(best)
        for i in range(len(params)):
            for sign in (1, -1):
                if len(cache) >= budget:
                    break
                trial = list(params)
                trial[i] = _round(params[i] * r**sign)
                cand = with_times(best, trial)
                if trial[i] == params[i] or not feasible(cand, sigma_min, sigma_max):
                    continue
                val = evaluate(cand, f"p{i} {'*' if sign > 0 else '/'} {r:.3g}")
                if val < best_val:
                    best, best_val, improved = cand, val, True
                    break
            if improved:
                break
        if not improved:
            r = math.sqrt(r)
    for row in rows:
        row["best"] = (
            row["score"] == best_val
            and row["times"] == ",".join(f"{t:g}" for t in best.times)
            and row["pairs"] == ",".join(f"{e:g}:{t:g}" for e, t in best.pairs)
        )
    return best, best_val, rows


def check_tunable(recipe):
    if recipe.method not in TUNABLE or not free_times(recipe):
        raise UserError(
            f"tune: {recipe.method} {sampling_text(recipe)} has no free times to tune (tunable: "
            f"{', '.join(TUNABLE)} with interior times or zigzag rounds)"
        )


# --------------------------------------------------------------------------------------------------
# scores on a validation seed range


class EnergyScorer:
    """score(recipe) -> (energy distance to `ref`, nfe) of vector samples from fixed seeds."""

    metric = "energy"

    def __init__(self, model, ref, seeds, shape):
        self.model, self.ref, self.seeds, self.shape = model, ref, list(seeds), tuple(shape)

    def __call__(self, recipe):
        from bcmcore.metrics.energy import energy_distance

        rng = sampling.SeededRNG(self.seeds)
        x, nfe = sampling.generate(self.model, recipe, rng.randn(self.shape, torch.float64), rng)
        return energy_distance(x.detach().double().cpu().numpy(), self.ref), nfe


class Scorer:
    """score(recipe) -> (FID or energy distance, nfe) of one model's samples from the sweep
    Evaluator's seeds (images: FID against its reference statistics)."""

    def __init__(self, ev, model, ref_vectors=None):
        self.ev, self.model, self.ref = ev, model, ref_vectors
        self.metric = "energy" if ev.vector else "fid"

    def __call__(self, recipe):
        from bcmcore.metrics import fid as fidlib
        from bcmcore.metrics.energy import energy_distance

        def fn(rng, y, idx):
            return sampling.generate(self.model, recipe, rng.randn(self.ev.shape), rng, y)

        feats, nfe, _ = self.ev.generate(self.model, fn, f"tune {recipe.method}")
        if self.ev.vector:
            return energy_distance(feats, self.ref), nfe
        mu, sigma = fidlib.feature_stats(feats, "tuning samples")
        return fidlib.frechet_distance(mu, sigma, self.ev.ref["mu"], self.ev.ref["sigma"]), nfe


def tune_spec(
    spec,
    out_dir,
    models=None,
    budget=30,
    seed_offset=SEED_OFFSET,
    num_samples=None,
    device=None,
    progress=True,
):
    """Tune every tunable sampler of the spec's bcm/cm models; write the search table
    (tune_table.csv), the chosen recipes (tuned.json) and the spec with them (tuned_spec.json).
    """
    from bcmcore.data import load_split
    from bcmcore.metrics.evaluator import Evaluator, load_model

    tune_spec_ = dataclasses.replace(
        spec,
        seed=spec.seed + seed_offset,
        num_samples=num_samples or spec.num_samples,
        models=tuple(m for m in spec.models if models is None or m.name in models),
    )
    if models is not None and {m.name for m in tune_spec_.models} != set(models):
        known = ", ".join(m.name for m in spec.models)
        raise UserError(f"tune --model: unknown model in {sorted(models)} (spec has: {known})")
    ev = Evaluator(tune_spec_, device, progress)
    ref = None
    if ev.vector:
        ref = load_split(spec.dataset, spec.ref_split)[0].double().numpy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, chosen, new_models = [], {}, []
    for i, m in enumerate(tune_spec_.models):
        model, _ = load_model(m, ev.device, ev.shape)
        scorer = Scorer(ev, model, ref)
        samplers, tuned = [], {}
        for j, s in enumerate(m.samplers):
            r = s.resolve(f"models[{i}].samplers[{j}]", m.kind).for_model(model)
            sampler, times, pairs = r.method, r.times, r.pairs
            label = s.name or s.recipe or sampler
            if sampler not in TUNABLE or (sampler == "multistep" and len(times) < 2):
                samplers.append(s)
                continue
            start = Recipe(sampler, times or (model.sigma_max, model.sigma_min), pairs)
            best, val, rows = pattern_search(
                scorer,
                start,
                model.sigma_min,
                model.sigma_max,
                budget=budget,
                warm=_warm_starts(start, tuned),
            )
            tuned[sampler] = best
            for row in rows:
                table.append({"model": m.name, "label": label, "metric": scorer.metric, **row})
            chosen.setdefault(m.name, []).append(
                {
                    "name": label,
                    "sampler": sampler,
                    "times": list(best.times),
                    "pairs": [list(p) for p in best.pairs],
                    "metric": scorer.metric,
                    "start_score": rows[0]["score"],
                    "score": val,
                    "evals": len(rows),
                }
            )
            print(
                f"[tune] {m.name} {label}: {scorer.metric} {rows[0]['score']:.4g} -> {val:.4g}"
                f" ({len(rows)} schedules) {sampling_text(best)}",
                flush=True,
            )
            samplers.append(
                type(s)(  # zigzag starts at T by definition: its spec takes no times
                    sampler=sampler,
                    times=() if sampler == "zigzag" else best.times,
                    pairs=best.pairs,
                    name=label,
                )
            )
        new_models.append(dataclasses.replace(m, samplers=tuple(samplers)))
        del model
    write_table(out / "tune_table.csv", table)
    info = {
        "seeds": [int(ev.seeds[0]), int(ev.seeds[-1])],
        "ref_split": spec.ref_split,
        "budget": budget,
        "recipes": chosen,
    }
    (out / "tuned.json").write_text(json.dumps(info, indent=2) + "\n")
    tuned = dataclasses.replace(spec, models=tuple(new_models))
    from bcmcore.config import to_dict

    (out / "tuned_spec.json").write_text(json.dumps(to_dict(tuned), indent=2) + "\n")
    return chosen, table


def _warm_starts(start, tuned):
    """A combined schedule from this model's tuned ancestral times and zigzag rounds (BCM Alg. 4
    is Alg. 2 followed by Alg. 3), when both were tuned before it and have its shape."""
    anc, zz = tuned.get("ancestral"), tuned.get("zigzag")
    if start.method != "combined" or anc is None or zz is None:
        return ()
    if len(anc.times) != len(start.times) or len(zz.pairs) != len(start.pairs):
        return ()
    return (Recipe("combined", anc.times, zz.pairs),)


def sampling_text(recipe):
    text = ">".join(f"{t:g}" for t in recipe.times)
    return text + "".join(f" +zz {e:g}:{t:g}" for e, t in recipe.pairs)


def write_table(path, rows):
    cols = [
        "model",
        "label",
        "metric",
        "eval",
        "move",
        "sampler",
        "nfe",
        "times",
        "pairs",
        "score",
        "best",
    ]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for row in rows:
            w.writerow(
                {k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in cols}
            )


def probe_spec(spec, out_dir, models=None, device=None):
    """probe-<model>.csv for every bcm model: the per-(t, u) inversion probe on the inversion
    split, with the exact columns where the reference split spans a subspace."""
    from bcmcore.data import load_split
    from bcmcore.metrics.evaluator import load_model
    from bcmcore.metrics.probe import COLUMNS, data_subspace, inversion_probe, u_use_summary

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_ref = load_split(spec.dataset, spec.ref_split)[0]
    basis = data_subspace(_to_float(x_ref))
    x, y = load_split(spec.dataset, spec.inversion_split, limit=spec.inversion_count)
    summary = []
    for m in spec.models:
        if m.kind != "bcm" or (models is not None and m.name not in models):
            continue
        model, _ = load_model(m, device or "cpu")
        num = getattr(getattr(model.cfg, "net", None), "num_classes", 0)
        rows = inversion_probe(model, _to_float(x).float(), y if num else None, basis=basis)
        cols = [c for c in COLUMNS if any(c in r for r in rows)]  # rel_L: not at t = eps
        with open(inside(out, f"probe-{m.name}.csv"), "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: f"{r[k]:.4g}" if k in r else "" for k in cols})
        print(f"[tune] probe of {m.name}: {out / f'probe-{m.name}.csv'}", flush=True)
        if any("rel_L" in r for r in rows):
            summary.append({"model": m.name, **u_use_summary(rows)})
    if summary:  # the u-use diagnostic (docs/u_use.md): one row per model, 0 = u-blind
        with open(out / "u_use.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(
                {k: v if k == "model" else f"{v:.4g}" for k, v in r.items()} for r in summary
            )


def _to_float(x):
    """uint8 images -> [-1, 1]; float vectors unchanged."""
    return x.double() / 127.5 - 1 if x.dtype == torch.uint8 else x.double()
