"""`bcm edit TASK`: the editing applications from a network file, one handler per task (shared flags
and inputs: cli/_inputs.py)."""

from pathlib import Path

import numpy as np
import torch

from bcmcore import dist, editing, runner, sampling
from bcmcore.cli._args import (
    fraction,
    jpeg_quality,
    nonneg_float,
    parse_ids,
    parse_times,
    positive_int,
)
from bcmcore.cli._inputs import (
    batch_inputs,
    input_args,
    load_inputs,
    network_parser,
    saved,
    schedule_times,
    setup_network,
    to_model,
)
from bcmcore.cli.flags import EDIT_TASKS
from bcmcore.config import UserError
from bcmcore.nets.facts import is_vector, num_classes
from bcmcore.recipes import SCHEDULES, describe

# interpolation: the second image's initial noise uses seed + this
SECOND_IMAGE_SEED = 1_000_000_007


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
    p = network_parser("bcm edit", edit)
    p.epilog = (
        "tasks: interpolate (invert a pair, slerp, regenerate), inpaint (BCM Alg. 6),\n"
        "inpaint-refine (BCM Alg. 7), cm-inpaint (CM's zero-shot inpainting), jpeg (restore\n"
        "JPEG-compressed images), class (iGCT / CFG-EDM class editing; --target-class).\n\n"
        f"named schedules (--recipe; T, eps: the network's sigma_max, sigma_min):\n"
        f"{describe(SCHEDULES)}"
    )
    p.add_argument("task", choices=EDIT_TASKS)
    input_args(p)
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
    times, gen = schedule_times(args, model)
    if args.gen_steps:
        return times, parse_times(args.gen_steps, "--gen-steps")
    return times, gen or [times[-1], model.sigma_min]


def _per_image(args, model, data, device, apply):
    """(items, batch fn) of a task that edits each image alone: apply(x, y, rng) -> (images shown
    before the results, results, nfe); the MSE is each result's against the clean input (JPEG:
    not the compressed one, App. B.1.2), averaged over the results."""
    x_all, y_all, idx_all = data

    def fn(pos):
        x, y, rng = batch_inputs(model, args, x_all, y_all, idx_all, pos, device)
        inputs, results, nfe = apply(x, y, rng)
        mse = sum(editing.mse_per_item(r.cpu(), x.cpu(), is_vector(model)) for r in results) / len(
            results
        )
        rows = [saved(model, v) for v in inputs + results]
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
        x1, y1, r1 = batch_inputs(model, args, x_all, y_all, idx_all, 2 * pos, device)
        x2, y2, _ = batch_inputs(model, args, x_all, y_all, idx_all, 2 * pos + 1, device)
        r2 = sampling.SeededRNG(args.seed + idx_all[2 * pos + 1] + SECOND_IMAGE_SEED, device)
        res, nfe = editing.interpolate(
            model, x1, x2, times, parse_times(args.alphas, "--alphas"), r1, r2, y1, y2
        )
        rows = [saved(model, x1)] + [saved(model, r) for r in res] + [saved(model, x2)]
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
    op.check(to_model(model, data[0][:1], "cpu"))

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
    model, meta, device = setup_network(args)
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


COMMANDS = {"edit": edit}
