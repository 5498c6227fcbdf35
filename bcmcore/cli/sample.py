"""`bcm sample | invert`: generation and inversion from a network file (the sharded runner and the
files they write: bcmcore.runner; shared flags and inputs: cli/_inputs.py)."""

from pathlib import Path

import numpy as np
import torch

from bcmcore import dist, editing, runner, sampling
from bcmcore.cli._args import nonneg_float, parse_ids, parse_pairs, parse_times, positive_int
from bcmcore.cli._inputs import (
    batch_inputs,
    input_args,
    load_inputs,
    network_parser,
    saved,
    schedule_times,
    setup_network,
)
from bcmcore.config import UserError
from bcmcore.nets.facts import data_shape, is_vector, num_classes
from bcmcore.recipes import (
    HEUN_POINTS,
    IGCT_STEPS,
    RECIPES,
    SCHEDULES,
    build,
    default_sampler,
    describe,
    get_recipe,
)


def _labels(model, spec, seeds, positions, device):
    num = num_classes(model)
    if not num:
        if spec not in (None, "none"):
            raise UserError(f"--class-labels: the network is unconditional, got {spec!r}")
        return None
    if spec in (None, "random"):
        return sampling.seeded_labels(seeds, num, device)
    ids = parse_ids(spec, "--class-labels")
    if max(ids) >= num:
        raise UserError(
            f"--class-labels: the network has {num} classes (0..{num - 1}), got {spec!r}"
        )
    return torch.as_tensor([ids[p % len(ids)] for p in positions], device=device)


# --------------------------------------------------------------------------------------- bcm sample
def sample_recipe(args, kind):
    """The generation recipe of --recipe, or of --sampler/--steps/--zigzag/--num-steps by the one
    rule of `recipes.build` (the sweep spec and the workflow's grid use it too)."""
    if args.recipe:
        if args.sampler or args.steps or args.zigzag or args.num_steps is not None:
            raise UserError("give either --recipe or --sampler/--steps/--zigzag/--num-steps")
        return get_recipe(args.recipe)
    return build(
        args.sampler or default_sampler(kind),
        parse_times(args.steps) if args.steps else (),
        parse_pairs(args.zigzag) if args.zigzag else (),
        args.num_steps,
        kind,
    )


def sample_parser():
    p = network_parser("bcm sample", sample)
    p.epilog = (
        "Without --sampler/--recipe a network generates with its kind's default: onestep (cm, "
        "bcm),\nheun on an 18-point Karras grid (edm), igct with 1 call (igct). Times end at eps:"
        "\n--sampler ancestral --steps 80,2.4 runs 80 -> 2.4 -> eps (docs/interfaces.md).\n\n"
        "named recipes (--recipe; T, eps: the network's sigma_max, sigma_min):\n"
        + describe(RECIPES)
    )
    p.add_argument("--seeds", default="0-63", help="one sample per seed, e.g. 0-49999")
    p.add_argument(
        "--sampler",
        choices=list(sampling.SAMPLERS),
        help="default: by network kind, onestep (cm, bcm), heun (edm), igct (igct)",
    )
    p.add_argument(
        "--steps", help="time steps, e.g. 80,2.4 (ancestral/combined: eps is appended; heun: 0)"
    )
    p.add_argument("--zigzag", help="zigzag rounds eps:t, e.g. 0.1:1.2,0.05:0.4")
    p.add_argument(
        "--num-steps",
        type=positive_int,
        help=f"heun: Karras grid points (default {HEUN_POINTS}); igct: denoiser calls, 1 or 2 "
        f"(default {IGCT_STEPS})",
    )
    p.add_argument("--recipe", help="a named recipe (below)")
    p.add_argument("--class-labels", help="random (default), or ids/ranges cycled over the seeds")
    p.add_argument(
        "--w", type=nonneg_float, default=1.0, help="guidance weight (paper convention, 1 = none)"
    )
    p.add_argument(
        "--clamp", action="store_true", help="multistep: clamp to [-1, 1] between steps (CM code)"
    )
    return p


def sample(argv):
    """Generate samples from a network file (npz, PNG grid, json)."""
    args = sample_parser().parse_args(argv)
    seeds = np.asarray(parse_ids(args.seeds, "--seeds"))
    model, meta, device = setup_network(args)
    out = Path(args.out)
    shape = data_shape(model)
    recipe = sample_recipe(args, model.kind).for_model(model)

    def gen(rng, y, s):
        clamp = True if args.clamp else None  # None: the sampler's own rule
        return sampling.generate(model, recipe, rng.randn(shape), rng, y, args.w, clamp)

    def fn(pos):
        rng = sampling.SeededRNG(seeds[pos], device)
        y = _labels(model, args.class_labels, seeds[pos], pos, device)
        x, nfe = gen(rng, y, seeds[pos])
        return {
            "images": saved(model, x),
            "labels": np.full(len(pos), -1) if y is None else y.cpu().numpy(),
            "nfe": np.full(len(pos), nfe),
        }

    res = runner.run_sharded(len(seeds), args.batch, fn, out, "samples")
    if res is not None:
        info = {
            "network": str(args.network),
            "step": meta.get("step"),
            "kind": model.kind,
            "nfe": int(res["nfe"][0]),
            "sampler": recipe.method,
            "times": list(recipe.times),
            "pairs": [list(q) for q in recipe.pairs],
            "w": args.w,
            "seeds": args.seeds,
            "count": len(seeds),
        }
        runner.write_outputs(
            out,
            "samples",
            {"arr_0": res["images"], "arr_1": res["labels"], "seeds": seeds},
            None if is_vector(model) else res["images"],
            args.grid,
            info=info,
        )
    dist.barrier()
    return 0


# --------------------------------------------------------------------------------------- bcm invert
def invert(argv):
    """Invert images to noise and reconstruct them (BCM Alg. 5; iGCT noiser; EDM ODE)."""
    p = network_parser("bcm invert", invert)
    p.epilog = f"named schedules (--recipe):\n{describe(SCHEDULES)}"
    input_args(p)
    p.add_argument(
        "--steps", help="increasing inversion times t0,...,tM (BCM Alg. 5), e.g. 0.07,15,80"
    )
    p.add_argument("--recipe", help="a named schedule (below), e.g. demo-invert-nfe2")
    p.add_argument("--gen-steps", help="decode along these times (default 1 step tM -> eps)")
    p.add_argument(
        "--num-steps", type=positive_int, default=18, help="edm: Heun ODE Karras grid points"
    )
    args = p.parse_args(argv)
    model, meta, device = setup_network(args)
    x_all, y_all, idx_all = load_inputs(args, model)
    out = Path(args.out)
    times, gen = (), ()
    if model.kind == "bcm":
        times, gen = schedule_times(args, model)
        gen = parse_times(args.gen_steps, "--gen-steps") if args.gen_steps else gen

    def fn(pos):
        x, y, rng = batch_inputs(model, args, x_all, y_all, idx_all, pos, device)
        lat, rec, n_inv, n = editing.invert_and_reconstruct(
            model, x, rng, y, times, gen, args.num_steps
        )
        mse = editing.mse_per_item(rec.cpu(), x.cpu(), is_vector(model))  # as the sweep's
        return {
            "latents": lat.float().cpu().numpy(),
            "recon": saved(model, rec),
            "orig": saved(model, x),
            "mse": mse.numpy(),
            "nfe_inv": np.full(len(pos), n_inv),
            "nfe": np.full(len(pos), n),
        }

    res = runner.run_sharded(len(idx_all), args.batch, fn, out, "invert")
    if res is not None:
        info = {
            "network": str(args.network),
            "kind": model.kind,
            "inversion_nfe": int(res["nfe_inv"][0]),
            "nfe": int(res["nfe"][0]),
            "mse": float(res["mse"].mean()),
            "images": len(idx_all),
        }
        grid = None if is_vector(model) else runner.pairs_grid(res["orig"], res["recon"], args.grid)
        runner.write_outputs(
            out,
            "invert",
            {
                "latents": res["latents"],
                "arr_0": res["recon"],
                "mse": res["mse"],
                "indices": idx_all,
            },
            grid,
            len(grid) if grid is not None else 0,
            ncol=2 * runner.grid_cols(args.grid),
            info=info,
        )
        dist.print0(f"inversion NFE {info['inversion_nfe']}, reconstruction MSE {info['mse']:.5f}")
    dist.barrier()
    return 0


COMMANDS = {"sample": sample, "invert": invert}
