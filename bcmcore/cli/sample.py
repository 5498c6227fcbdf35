"""`bcm sample | invert | edit`: generation, inversion and the editing applications from a network
file (the sharded runner and the files they write: bcmcore.runner)."""

from pathlib import Path

import numpy as np
import torch

from bcmcore import dist, editing, runner, sampling
from bcmcore.cli._args import (
    fraction,
    jpeg_quality,
    nonneg_float,
    nonneg_int,
    parse_ids,
    parse_pairs,
    parse_times,
    parser,
    positive_int,
)
from bcmcore.cli.flags import EDIT_TASKS
from bcmcore.config import UserError
from bcmcore.images import to_float, to_uint8_nhwc
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
    get_schedule,
)

# interpolation: the second image's initial noise uses seed + this
SECOND_IMAGE_SEED = 1_000_000_007


def _common(prog, handler):
    p = parser(prog, handler.__doc__)
    p.add_argument(
        "--network",
        required=True,
        help="network file: network-*.pt written by `bcm train`, or a .safetensors (bcm convert)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch", type=positive_int, default=64, help="batch per rank")
    p.add_argument("--device", default=None, help="cpu to force CPU; default: CUDA if available")
    p.add_argument("--grid", type=nonneg_int, default=64, help="items shown in the PNG grid")
    return p


def _setup(args):
    from bcmcore.nets import load_network

    if args.batch < 1:
        raise UserError(f"--batch: expected a positive integer, got {args.batch}")
    _, _, _, device = dist.init(device=args.device)
    model, meta = load_network(args.network, device)
    return model.requires_grad_(False), meta, device


def _images(model, x):
    """Network output -> what we save: uint8 NHWC for images, float32 vectors for toy data."""
    return x.detach().float().cpu().numpy() if is_vector(model) else to_uint8_nhwc(x)


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
    p = _common("bcm sample", sample)
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
    model, meta, device = _setup(args)
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
            "images": _images(model, x),
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


# ----------------------------------------------------------------------------------------------
# inputs
def _input_args(p):
    p.add_argument("--data", help="shard directory (results/<ds>/shards) to read images from")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--input", help="instead of --data: an .npz (arr_0/images uint8 NHWC) or a folder of PNGs"
    )
    p.add_argument(
        "--indices", help="which images, e.g. 0-63 (default: 0-15 of --data, all of --input)"
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="image i's noise uses seed + i")


def load_inputs(args, model):
    """-> (x, y or None, indices) for the selected --indices of --data or --input, converted to the
    network's channels and checked against its size."""
    x, y = runner.load_inputs(args.data, args.split, args.input, data_shape(model))
    if args.indices is None:  # a folder of a user's PNGs: all of them; shards: the first 16
        idx = list(range(len(x) if args.input else min(16, len(x))))
    else:
        idx = parse_ids(args.indices, "--indices")
    if max(idx) >= len(x):
        raise UserError(f"--indices: only {len(x)} images available, asked for index {max(idx)}")
    return x[idx], (None if y is None else y[idx]), np.asarray(idx)


def _to_model(model, x, device):
    x = x.to(device)
    return x.float() if is_vector(model) else to_float(x)


def _batch_inputs(model, args, x_all, y_all, idx_all, pos, device):
    x = _to_model(model, x_all[pos], device)
    y = y_all[pos].to(device) if (y_all is not None and num_classes(model)) else None
    return x, y, sampling.SeededRNG(args.seed + idx_all[pos], device)


def _times(args, model, flag="--steps"):
    if getattr(args, "recipe", None):
        r = get_schedule(args.recipe).for_model(model)
        return list(r.times), list(r.gen_times)
    if not args.steps:
        raise UserError(f"{flag}: give the time steps (e.g. 0.07,15,80) or --recipe")
    return parse_times(args.steps, flag), []


# --------------------------------------------------------------------------------------- bcm invert
def invert(argv):
    """Invert images to noise and reconstruct them (BCM Alg. 5; iGCT noiser; EDM ODE)."""
    p = _common("bcm invert", invert)
    p.epilog = f"named schedules (--recipe):\n{describe(SCHEDULES)}"
    _input_args(p)
    p.add_argument(
        "--steps", help="increasing inversion times t0,...,tM (BCM Alg. 5), e.g. 0.07,15,80"
    )
    p.add_argument("--recipe", help="a named schedule (below), e.g. demo-invert-nfe2")
    p.add_argument("--gen-steps", help="decode along these times (default 1 step tM -> eps)")
    p.add_argument(
        "--num-steps", type=positive_int, default=18, help="edm: Heun ODE Karras grid points"
    )
    args = p.parse_args(argv)
    model, meta, device = _setup(args)
    x_all, y_all, idx_all = load_inputs(args, model)
    out = Path(args.out)
    times, gen = (), ()
    if model.kind == "bcm":
        times, gen = _times(args, model)
        gen = parse_times(args.gen_steps, "--gen-steps") if args.gen_steps else gen

    def fn(pos):
        x, y, rng = _batch_inputs(model, args, x_all, y_all, idx_all, pos, device)
        lat, rec, n_inv, n = editing.invert_and_reconstruct(
            model, x, rng, y, times, gen, args.num_steps
        )
        mse = editing.mse_per_item(rec.cpu(), x.cpu(), is_vector(model))  # as the sweep's
        return {
            "latents": lat.float().cpu().numpy(),
            "recon": _images(model, rec),
            "orig": _images(model, x),
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


# ----------------------------------------------------------------------------------------- bcm edit


def _mask(args, x):
    if args.mask == "box":
        return editing.random_box_mask(x.shape, args.mask_frac, x.device)
    path = Path(args.mask)
    if path.suffix != ".npy" or not path.is_file():
        raise UserError(
            f"--mask {path}: expected 'box' or an existing .npy file of 0/1 (1 = missing)"
        )
    return torch.as_tensor(np.load(path)).to(x.device, x.dtype)


def edit_parser():
    p = _common("bcm edit", edit)
    p.epilog = (
        "tasks: interpolate (invert a pair, slerp, regenerate), inpaint (BCM Alg. 6),\n"
        "inpaint-refine (BCM Alg. 7), cm-inpaint (CM's zero-shot inpainting), jpeg (restore\n"
        "JPEG-compressed images), class (iGCT / CFG-EDM class editing; --target-class).\n\n"
        f"named schedules (--recipe; T, eps: the network's sigma_max, sigma_min):\n"
        f"{describe(SCHEDULES)}"
    )
    p.add_argument("task", choices=EDIT_TASKS)
    _input_args(p)
    p.add_argument(
        "--steps",
        help="inversion times t0,..,tM (increasing); cm-inpaint, super-resolution, colorize: "
        "decreasing taus",
    )
    p.add_argument("--recipe", help="a named schedule (below), e.g. demo-inpaint, cm-inpaint-18")
    p.add_argument("--gen-steps", help="inpaint: generation times tM,..,eps (default one step)")
    p.add_argument(
        "--refine-steps", help="inpaint-refine: decreasing refinement levels (BCM Alg. 7)"
    )
    p.add_argument(
        "--mask", default="box", help="box (centre square) or a .npy of 0/1, 1 = missing"
    )
    p.add_argument("--mask-frac", type=fraction, default=0.5)
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="interpolate: slerp weights")
    p.add_argument("--quality", type=jpeg_quality, default=20, help="jpeg: PIL quality factor")
    p.add_argument(
        "--factor",
        type=positive_int,
        default=4,
        help="super-resolution: average-pooling factor p (p x p)",
    )
    p.add_argument("--target-class", help="class: the target label, or 'all' (a column per class)")
    p.add_argument(
        "--w", type=nonneg_float, default=1.0, help="class: guidance weight (paper convention)"
    )
    p.add_argument(
        "--num-steps", type=positive_int, default=18, help="class (edm): Heun Karras grid points"
    )
    p.add_argument("--clamp", action="store_true", help="clamp to [-1, 1] after each CM-style step")
    return p


def _edit_times(args, model):
    """Inversion times and generation times of an inversion-based task (--gen-steps, else the
    recipe's, else one step t_M -> eps)."""
    times, gen = _times(args, model)
    if args.gen_steps:
        return times, parse_times(args.gen_steps, "--gen-steps")
    return times, gen or [times[-1], model.sigma_min]


def _per_image(args, model, data, device, apply):
    """(items, batch fn) of a task that edits each image alone: apply(x, y, rng) -> (images shown
    before the results, results, nfe); the MSE is each result's against the clean input (JPEG:
    not the compressed one, App. B.1.2), averaged over the results."""
    x_all, y_all, idx_all = data

    def fn(pos):
        x, y, rng = _batch_inputs(model, args, x_all, y_all, idx_all, pos, device)
        inputs, results, nfe = apply(x, y, rng)
        mse = sum(editing.mse_per_item(r.cpu(), x.cpu(), is_vector(model)) for r in results) / len(
            results
        )
        rows = [_images(model, v) for v in inputs + results]
        return {"result": np.stack(rows, 1), "mse": mse.numpy(), "nfe": np.full(len(pos), nfe)}

    return len(idx_all), fn


def _masked(args, model, x):
    """The mask (1 = missing) and the input as shown: missing pixels black (vectors: 0)."""
    mask = _mask(args, x)
    return mask, x * (1 - mask) + (-1 if not is_vector(model) else 0) * mask


def _edit_interpolate(args, model, data, device):
    """Pairs (indices[2k], indices[2k+1]) inverted with different initial noises, slerped (BCM
    App. C.3.1); a row: x1, the interpolants, x2."""
    times, _ = _edit_times(args, model)
    x_all, y_all, idx_all = data
    if len(idx_all) % 2:
        raise UserError(
            f"--indices: interpolation takes images in pairs, got {len(idx_all)} images"
        )

    def fn(pos):
        x1, y1, r1 = _batch_inputs(model, args, x_all, y_all, idx_all, 2 * pos, device)
        x2, y2, _ = _batch_inputs(model, args, x_all, y_all, idx_all, 2 * pos + 1, device)
        r2 = sampling.SeededRNG(args.seed + idx_all[2 * pos + 1] + SECOND_IMAGE_SEED, device)
        res, nfe = editing.interpolate(
            model, x1, x2, times, parse_times(args.alphas, "--alphas"), r1, r2, y1, y2
        )
        rows = [_images(model, x1)] + [_images(model, r) for r in res] + [_images(model, x2)]
        return {"result": np.stack(rows, 1), "nfe": np.full(len(pos), nfe)}

    return len(idx_all) // 2, fn


def _masked_task(routine):
    """The handler of a masked task: routine(args, model, x, mask, times, gen, rng, y) -> (result,
    nfe); a row: the input, the input as shown (missing pixels black), the result."""

    def handler(args, model, data, device):
        times, gen = _edit_times(args, model)

        def apply(x, y, rng):
            mask, shown = _masked(args, model, x)
            res, nfe = routine(args, model, x, mask, times, gen, rng, y)
            return [x, shown], [res], nfe

        return _per_image(args, model, data, device, apply)

    return handler


@_masked_task
def _edit_inpaint(args, model, x, mask, times, gen, rng, y):
    return editing.inpaint(model, x, mask, times, gen, rng, y)  # BCM Alg. 6


@_masked_task
def _edit_inpaint_refine(args, model, x, mask, times, gen, rng, y):
    refine = parse_times(args.refine_steps or "", "--refine-steps")  # BCM Alg. 7
    return editing.inpaint_refine(model, x, mask, times, gen, refine, rng, y, args.clamp)


@_masked_task
def _edit_cm_inpaint(args, model, x, mask, times, gen, rng, y):
    return editing.cm_inpaint(model, x, mask, times, rng, y, clamp=args.clamp)  # CM Alg. 4


def _edit_linear(args, model, data, device):
    """CM Alg. 4 with a linear operator: super-resolution (A = p x p average pooling) or
    colorization (A = luminance; bcmcore/linear_ops.py). Bad data or factor: one error before any
    work."""
    from bcmcore.linear_ops import make_operator

    times, _ = _edit_times(args, model)
    op = make_operator(args.task, args.factor)
    op.check(_to_model(model, data[0][:1], "cpu"))

    def apply(x, y, rng):
        res, nfe = editing.cm_linear_edit(model, x, op, times, rng, y, clamp=args.clamp)
        return [x, op.shown(x)], [res], nfe

    return _per_image(args, model, data, device, apply)


def _edit_jpeg(args, model, data, device):
    """Blind JPEG restoration (BCM App. B.1.2)."""
    times, _ = _edit_times(args, model)

    def apply(x, y, rng):
        shown = editing.jpeg_compress(x, args.quality)
        res, nfe = editing.jpeg_restore(model, shown, times, rng, y)
        return [x, shown], [res], nfe

    return _per_image(args, model, data, device, apply)


def _edit_class(args, model, data, device):
    """Class editing (iGCT, CFG-EDM): the source, then its edit into each target class (its own
    class: the reconstruction)."""
    if args.target_class is None or data[1] is None:
        raise UserError(
            "class editing needs --target-class and source labels (from --data or the npz)"
        )
    num = num_classes(model)
    targets = (
        list(range(num))
        if args.target_class == "all"
        else parse_ids(args.target_class, "--target-class")
    )
    if not targets or min(targets) < 0 or max(targets) >= num:
        raise UserError(
            f"--target-class: expected 'all' or class ids in 0..{num - 1}, got "
            f"{args.target_class!r}"
        )

    def apply(x, y, rng):
        edits = [
            editing.edit(model, x, y, torch.full_like(y, c), args.w, args.num_steps)
            for c in targets
        ]
        return [x], [r for r, _ in edits], edits[0][1]

    return _per_image(args, model, data, device, apply)


# `bcm edit <task>`: one handler per task (the task names: bcmcore.cli.flags.EDIT_TASKS)
EDIT_HANDLERS = {
    "interpolate": _edit_interpolate,
    "inpaint": _edit_inpaint,
    "inpaint-refine": _edit_inpaint_refine,
    "cm-inpaint": _edit_cm_inpaint,
    "super-resolution": _edit_linear,
    "colorize": _edit_linear,
    "jpeg": _edit_jpeg,
    "class": _edit_class,
}


def edit(argv):
    """Edit images: interpolate, inpaint, restore JPEG, super-resolve, colorize, relabel."""
    args = edit_parser().parse_args(argv)
    model, meta, device = _setup(args)
    x_all, y_all, idx_all = load_inputs(args, model)
    out, task = Path(args.out), args.task
    n, fn = EDIT_HANDLERS[task](args, model, (x_all, y_all, idx_all), device)
    res = runner.run_sharded(n, args.batch, fn, out, task)
    if res is not None:
        info = {
            "network": str(args.network),
            "kind": model.kind,
            "task": task,
            "nfe": int(res["nfe"][0]),
            "items": n,
        }
        if "mse" in res:  # always against the clean input (JPEG: not the compressed one)
            info["mse_vs_clean"] = float(res["mse"].mean())
        per_row = res["result"].shape[1]
        grid = (
            None
            if is_vector(model)
            else res["result"][: max(1, args.grid // per_row)].reshape(-1, *res["result"].shape[2:])
        )
        runner.write_outputs(
            out,
            f"edit-{task}",
            {
                "arr_0": res["result"],
                "indices": idx_all,
                **({"mse": res["mse"]} if "mse" in res else {}),
            },
            grid,
            len(grid) if grid is not None else 0,
            ncol=per_row,
            info=info,
        )
    dist.barrier()
    return 0


COMMANDS = {"sample": sample, "invert": invert, "edit": edit}
