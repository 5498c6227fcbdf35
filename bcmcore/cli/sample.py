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
from bcmcore.config import UserError
from bcmcore.images import to_float, to_uint8_nhwc
from bcmcore.nets.facts import data_shape, is_vector, num_classes
from bcmcore.recipes import RECIPES, Recipe, get_recipe, get_schedule

SECOND_IMAGE_SEED = (
    1_000_000_007  # interpolation: the second image's initial noise uses seed + this
)


def _common(prog):
    p = parser(prog)
    p.add_argument("--network", required=True, help="network-*.pt written by `bcm train`")
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


# ---------------------------------------------------------------------------------------------- bcm
# sample
def _recipe(args, model):
    """The generation recipe of --recipe, or of --sampler/--steps/--zigzag/--num-steps."""
    if args.recipe:
        if args.sampler or args.steps or args.zigzag:
            raise UserError("give either --recipe or --sampler/--steps/--zigzag, not both")
        return get_recipe(args.recipe)
    s = args.sampler or {"edm": "heun", "igct": "igct"}.get(model.kind, "onestep")
    sampler = sampling.get_sampler(s, "--sampler")
    times = parse_times(args.steps) if args.steps else []
    if s in ("ancestral", "combined") and times and times[-1] > model.sigma_min:
        times.append(model.sigma_min)  # "--steps 80,2.4" means 80 -> 2.4 -> eps
    if s == "heun" and not times:  # EDM Heun on the model's Karras grid
        return Recipe("heun", karras=(args.num_steps, (), True))
    if sampler.times and not times:
        raise UserError(
            f"--steps: sampler {s} needs time steps, e.g. --steps 80,2.4 (or use --recipe)"
        )
    pairs = parse_pairs(args.zigzag) if args.zigzag else []
    if sampler.pairs and not pairs:
        raise UserError(f"--zigzag: sampler {s} needs zigzag rounds eps:t, e.g. --zigzag 0.1:1.2")
    return Recipe(s, tuple(times), tuple(pairs), steps=args.num_steps)


def sample_parser():
    p = _common("bcm sample")
    p.add_argument("--seeds", default="0-63", help="one sample per seed, e.g. 0-49999")
    p.add_argument(
        "--sampler", choices=list(sampling.SAMPLERS), help="default onestep (edm: heun, igct: igct)"
    )
    p.add_argument("--steps", help="time steps, e.g. 80,2.4 (ancestral; eps is appended)")
    p.add_argument("--zigzag", help="zigzag rounds eps:t, e.g. 0.1:1.2,0.05:0.4")
    p.add_argument(
        "--num-steps", type=positive_int, default=18, help="heun: Karras grid points; igct: 1 or 2"
    )
    p.add_argument("--recipe", help=f"named recipe: {', '.join(sorted(RECIPES))}")
    p.add_argument("--class-labels", help="random (default), or ids/ranges cycled over the seeds")
    p.add_argument(
        "--w", type=nonneg_float, default=1.0, help="guidance weight (paper convention, 1 = none)"
    )
    p.add_argument(
        "--clamp", action="store_true", help="multistep: clamp to [-1, 1] between steps (CM code)"
    )
    return p


def sample(argv):
    args = sample_parser().parse_args(argv)
    seeds = np.asarray(parse_ids(args.seeds, "--seeds"))
    model, meta, device = _setup(args)
    out = Path(args.out)
    shape = data_shape(model)
    recipe = _recipe(args, model).for_model(model)

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
            "sampler": recipe.sampler,
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
    p.add_argument("--indices", default="0-15", help="which images, e.g. 0-63")
    p.add_argument("--seed", type=nonneg_int, default=0, help="image i's noise uses seed + i")


def load_inputs(args):
    """-> (x, y or None, indices) for the selected --indices of --data or --input."""
    x, y = runner.load_inputs(args.data, args.split, args.input)
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


# ---------------------------------------------------------------------------------------------- bcm
# invert
def invert(argv):
    p = _common("bcm invert")
    _input_args(p)
    p.add_argument(
        "--steps", help="increasing inversion times t0,...,tM (BCM Alg. 5), e.g. 0.07,15,80"
    )
    p.add_argument("--recipe", help="e.g. imagenet64-invert-nfe2")
    p.add_argument("--gen-steps", help="decode along these times (default 1 step tM -> eps)")
    p.add_argument(
        "--num-steps", type=positive_int, default=18, help="edm: Heun ODE Karras grid points"
    )
    args = p.parse_args(argv)
    model, meta, device = _setup(args)
    x_all, y_all, idx_all = load_inputs(args)
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
        mse = (
            ((rec - x) ** 2).flatten(1).mean(1).cpu()
            if is_vector(model)
            else editing.mse_uint8(rec, x)
        )
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


# ---------------------------------------------------------------------------------------------- bcm
# edit
TASKS = ("interpolate", "inpaint", "inpaint-refine", "cm-inpaint", "jpeg", "class")


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
    p = _common("bcm edit")
    p.add_argument("task", choices=TASKS)
    _input_args(p)
    p.add_argument(
        "--steps", help="inversion times t0,..,tM (increasing); cm-inpaint: decreasing taus"
    )
    p.add_argument("--recipe", help="named schedule, e.g. demo-inpaint, cm-inpaint-18")
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
    p.add_argument("--target-class", help="class: the target label, or 'all' (a column per class)")
    p.add_argument(
        "--w", type=nonneg_float, default=1.0, help="class: guidance weight (paper convention)"
    )
    p.add_argument(
        "--num-steps", type=positive_int, default=18, help="class (edm): Heun Karras grid points"
    )
    p.add_argument("--clamp", action="store_true", help="clamp to [-1, 1] after each CM-style step")
    return p


def edit(argv):
    args = edit_parser().parse_args(argv)
    model, meta, device = _setup(args)
    x_all, y_all, idx_all = load_inputs(args)
    out, task = Path(args.out), args.task
    if task == "class":
        if args.target_class is None or y_all is None:
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
    else:
        times, gen = _times(args, model)
        gen = (
            parse_times(args.gen_steps, "--gen-steps")
            if args.gen_steps
            else (gen or [times[-1], model.sigma_min])
        )
    n = len(idx_all)
    if task == "interpolate":
        if n % 2:
            raise UserError(f"--indices: interpolation takes images in pairs, got {n} images")
        n //= 2

    def fn(pos):
        if task == "interpolate":  # pairs (indices[2k], indices[2k+1]), different initial noises
            x1, y1, r1 = _batch_inputs(model, args, x_all, y_all, idx_all, 2 * pos, device)
            x2, y2, _ = _batch_inputs(model, args, x_all, y_all, idx_all, 2 * pos + 1, device)
            r2 = sampling.SeededRNG(args.seed + idx_all[2 * pos + 1] + SECOND_IMAGE_SEED, device)
            res, nfe = editing.interpolate(
                model, x1, x2, times, parse_times(args.alphas, "--alphas"), r1, r2, y1, y2
            )
            rows = [_images(model, x1)] + [_images(model, r) for r in res] + [_images(model, x2)]
            return {"result": np.stack(rows, 1), "nfe": np.full(len(pos), nfe)}
        x, y, rng = _batch_inputs(model, args, x_all, y_all, idx_all, pos, device)
        if task in ("inpaint", "inpaint-refine", "cm-inpaint"):
            mask = _mask(args, x)
            shown = x * (1 - mask) + (-1 if not is_vector(model) else 0) * mask
            if task == "inpaint":
                res, nfe = editing.inpaint(model, x, mask, times, gen, rng, y)
            elif task == "inpaint-refine":
                refine = parse_times(args.refine_steps or "", "--refine-steps")
                res, nfe = editing.inpaint_refine(
                    model, x, mask, times, gen, refine, rng, y, args.clamp
                )
            else:
                res, nfe = editing.cm_inpaint(model, x, mask, times, rng, y, clamp=args.clamp)
        elif task == "jpeg":
            shown = editing.jpeg_compress(x, args.quality)
            res, nfe = editing.jpeg_restore(model, shown, times, rng, y)
        else:  # source, then its edit into each target class (its own class: the reconstruction)
            from bcmcore import guided

            edits = [
                guided.edit(model, x, y, torch.full_like(y, c), args.w, args.num_steps)
                for c in targets
            ]
            nfe, inputs, results = edits[0][1], [x], [r for r, _ in edits]
        if task != "class":
            inputs, results = [x, shown], [res]
        mse = sum(editing.mse_per_item(r.cpu(), x.cpu(), is_vector(model)) for r in results) / len(
            results
        )
        rows = [_images(model, v) for v in inputs + results]
        return {"result": np.stack(rows, 1), "mse": mse.numpy(), "nfe": np.full(len(pos), nfe)}

    res = runner.run_sharded(n, args.batch, fn, out, task)
    if res is not None:
        info = {
            "network": str(args.network),
            "kind": model.kind,
            "task": task,
            "nfe": int(res["nfe"][0]),
            "items": n,
        }
        if (
            "mse" in res
        ):  # always against the clean input (JPEG: not the compressed one, App. B.1.2)
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
