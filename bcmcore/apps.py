"""`bcm sample | invert | edit`: generation, inversion and the editing applications from a network
file.

Each rank takes every world_size-th item (seed or image), runs it in batches with a progress bar and
writes its part; rank 0 merges the parts in item order into one .npz and a PNG grid (atomic writes).
Sample i depends only on seed i, so results do not depend on the batch size or the number of GPUs.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bcmcore import dist, editing, sampling
from bcmcore.config import UserError
from bcmcore.util import atomic_path, atomic_write_text

GEN_SAMPLERS = ("onestep", "ancestral", "zigzag", "combined", "multistep", "heun")
SECOND_IMAGE_SEED = (
    1_000_000_007  # interpolation: the second image's initial noise uses seed + this
)


def parse_ids(text, flag):
    """'0-63' or '0,5,7-9' -> [0, ..., 63] / [0, 5, 7, 8, 9]."""
    ids = []
    try:
        for part in str(text).split(","):
            a, _, b = part.strip().partition("-")
            ids += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise UserError(
            f"{flag}: expected numbers and ranges such as 0-63 or 0,5,7-9, got {text!r}"
        ) from None
    if not ids or min(ids) < 0:
        raise UserError(f"{flag}: expected non-negative numbers, got {text!r}")
    return ids


# ----------------------------------------------------------------------------------------------
# plumbing
def _common(prog):
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--network", required=True, help="network-*.pt written by `bcm train`")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch", type=int, default=64, help="batch per rank")
    p.add_argument("--device", default=None, help="cpu to force CPU; default: CUDA if available")
    p.add_argument("--grid", type=int, default=64, help="items shown in the PNG grid")
    return p


def _setup(args):
    from bcmcore.nets import load_network

    if args.batch < 1:
        raise UserError(f"--batch: expected a positive integer, got {args.batch}")
    _, _, _, device = dist.init(device=args.device)
    model, meta = load_network(args.network, device)
    return model.requires_grad_(False), meta, device


def _vector(model):
    return model.cfg.net.arch == "mlp"


def _save_npz(path, arrays):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _run_sharded(n, batch, fn, out, name):
    """fn(positions) -> dict of per-item arrays; this rank runs positions rank::world. Rank 0 gets
    the merge."""
    r, ws = dist.rank(), dist.world_size()
    mine = np.arange(r, n, ws)
    parts = [
        fn(mine[i : i + batch])
        for i in tqdm(
            range(0, len(mine), batch), desc=name, unit="batch", disable=not dist.is_main()
        )
    ]
    local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    local["_pos"] = mine
    if ws > 1:  # per-rank parts on the shared file system, merged by rank 0
        _save_npz(out / f".part-{name}-{r:05d}.npz", local)
        dist.barrier()
        if not dist.is_main():
            return None
        files = [out / f".part-{name}-{i:05d}.npz" for i in range(ws)]
        loaded = [dict(np.load(f)) for f in files]
        keys = next((list(d) for d in loaded if len(d) > 1), ["_pos"])
        local = {k: np.concatenate([d[k] for d in loaded if k in d]) for k in keys}
        for f in files:
            f.unlink()
    order = np.argsort(local.pop("_pos"), kind="stable")
    return {k: v[order] for k, v in local.items()}


def _write(out, name, arrays, grid_images, grid_n, ncol=None, info=None):
    """Rank 0: name.npz (uint8 NHWC images as arr_0, ADM-evaluator style), name.png, name.json."""
    from bcmcore.metrics.report import save_grid

    _save_npz(out / f"{name}.npz", arrays)
    if grid_images is not None and grid_images.ndim == 4 and grid_n:
        save_grid(out / f"{name}.png", grid_images[:grid_n].transpose(0, 3, 1, 2), ncol=ncol)
    if info is not None:
        atomic_write_text(out / f"{name}.json", json.dumps(info, indent=2) + "\n")
    dist.print0(f"wrote {out / name}.npz" + (f" and {name}.png" if grid_images is not None else ""))


def _images(model, x):
    """Network output -> what we save: uint8 NHWC for images, float32 vectors for toy data."""
    return x.detach().float().cpu().numpy() if _vector(model) else editing.to_uint8(x)


def _labels(model, spec, seeds, positions, device):
    num = model.cfg.net.num_classes
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
    if args.recipe:
        if args.sampler or args.steps or args.zigzag:
            raise UserError("give either --recipe or --sampler/--steps/--zigzag, not both")
        r = sampling.get_recipe(args.recipe)
    else:
        s = args.sampler or ("heun" if model.kind == "edm" else "onestep")
        times = sampling.parse_times(args.steps) if args.steps else []
        if s in ("ancestral", "combined") and times and times[-1] > model.sigma_min:
            times.append(model.sigma_min)  # "--steps 80,2.4" means 80 -> 2.4 -> eps
        if s == "heun" and not times:
            times = sampling.karras_times(
                args.num_steps, model.sigma_min, model.sigma_max, zero=True
            )
        if s in ("ancestral", "combined", "multistep") and not times:
            raise UserError(
                f"--steps: sampler {s} needs time steps, e.g. --steps 80,2.4 (or use --recipe)"
            )
        pairs = sampling.parse_pairs(args.zigzag) if args.zigzag else []
        if s in ("zigzag", "combined") and not pairs:
            raise UserError(
                f"--zigzag: sampler {s} needs zigzag rounds eps:t, e.g. --zigzag 0.1:1.2"
            )
        r = sampling.Recipe(s, tuple(times), tuple(pairs))
    if r.sampler not in GEN_SAMPLERS:
        raise UserError(
            f"recipe {args.recipe!r} is for `bcm {'invert' if r.sampler == 'invert' else 'edit'}`, "
            "not for generation"
        )
    return r


def sample_main(argv):
    p = _common("bcm sample")
    p.add_argument("--seeds", default="0-63", help="one sample per seed, e.g. 0-49999")
    p.add_argument("--sampler", choices=GEN_SAMPLERS, help="default onestep (edm: heun)")
    p.add_argument("--steps", help="time steps, e.g. 80,2.4 (ancestral; eps is appended)")
    p.add_argument("--zigzag", help="zigzag rounds eps:t, e.g. 0.1:1.2,0.05:0.4")
    p.add_argument(
        "--num-steps", type=int, default=18, help="heun: Karras grid points; igct: 1 or 2"
    )
    p.add_argument("--recipe", help=f"named schedule: {', '.join(sorted(sampling.RECIPES))}")
    p.add_argument("--class-labels", help="random (default), or ids/ranges cycled over the seeds")
    p.add_argument(
        "--w", type=float, default=1.0, help="guidance weight (paper convention, 1 = none)"
    )
    p.add_argument(
        "--clamp", action="store_true", help="multistep: clamp to [-1, 1] between steps (CM code)"
    )
    args = p.parse_args(argv)
    seeds = np.asarray(parse_ids(args.seeds, "--seeds"))
    model, meta, device = _setup(args)
    out = Path(args.out)
    shape = sampling.data_shape(model)
    if model.kind == "igct":  # iGCT generates through its guided denoiser (bcmcore.guided)
        from bcmcore import guided

        recipe = sampling.Recipe("igct", note=f"{args.num_steps} step")
        gen = lambda rng, y, s: guided.igct_generate(
            model, s, y, args.w, shape, args.num_steps, device=device, clamp=not _vector(model)
        )
    else:
        recipe = _recipe(args, model)
        gen = lambda rng, y, s: sampling.generate(
            model, recipe, rng.randn(shape), rng, y, args.w, args.clamp
        )

    def fn(pos):
        rng = sampling.SeededRNG(seeds[pos], device)
        y = _labels(model, args.class_labels, seeds[pos], pos, device)
        x, nfe = gen(rng, y, seeds[pos])
        return {
            "images": _images(model, x),
            "labels": np.full(len(pos), -1) if y is None else y.cpu().numpy(),
            "nfe": np.full(len(pos), nfe),
        }

    res = _run_sharded(len(seeds), args.batch, fn, out, "samples")
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
        _write(
            out,
            "samples",
            {"arr_0": res["images"], "arr_1": res["labels"], "seeds": seeds},
            None if _vector(model) else res["images"],
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
    p.add_argument("--seed", type=int, default=0, help="image i's noise uses seed + i")


def load_inputs(args):
    """-> (x uint8 [N, C, H, W] or float [N, d], y long [N] or None) for the selected indices."""
    if bool(args.data) == bool(args.input):
        raise UserError("give exactly one of --data SHARD_DIR or --input FILE.npz|PNG_DIR")
    if args.data:
        from bcmcore.data import load_split

        x, y = load_split(args.data, args.split)
    else:
        path = Path(args.input)
        if path.is_dir():
            from PIL import Image

            files = sorted(path.glob("*.png"))
            if not files:
                raise UserError(f"{path}: no .png files")
            x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
            y = None
        elif path.suffix == ".npz" and path.is_file():
            d = np.load(path)
            key = "images" if "images" in d else "arr_0"
            if key not in d:
                raise UserError(f"{path}: expected an array 'images' or 'arr_0' (uint8 NHWC)")
            x, y = d[key], (d["labels"] if "labels" in d else d["arr_1"] if "arr_1" in d else None)
        else:
            raise UserError(f"--input {path}: expected an existing .npz file or a folder of PNGs")
        x = torch.as_tensor(x).permute(0, 3, 1, 2) if x.ndim == 4 else torch.as_tensor(x)
        y = None if y is None else torch.as_tensor(y).long()
    idx = parse_ids(args.indices, "--indices")
    if max(idx) >= len(x):
        raise UserError(f"--indices: only {len(x)} images available, asked for index {max(idx)}")
    return x[idx], (None if y is None else y[idx]), np.asarray(idx)


def _to_model(model, x, device):
    x = x.to(device)
    return x.float() if _vector(model) else x.float() / 127.5 - 1


def _batch_inputs(model, args, x_all, y_all, idx_all, pos, device):
    x = _to_model(model, x_all[pos], device)
    y = y_all[pos].to(device) if (y_all is not None and model.cfg.net.num_classes) else None
    return x, y, sampling.SeededRNG(args.seed + idx_all[pos], device)


def _times(args, model, flag="--steps"):
    if getattr(args, "recipe", None):
        r = sampling.get_recipe(args.recipe)
        return list(r.times), list(r.gen_times)
    if not args.steps:
        raise UserError(f"{flag}: give the time steps (e.g. 0.07,15,80) or --recipe")
    return sampling.parse_times(args.steps, flag), []


# ---------------------------------------------------------------------------------------------- bcm
# invert
def invert_main(argv):
    p = _common("bcm invert")
    _input_args(p)
    p.add_argument(
        "--steps", help="increasing inversion times t0,...,tM (BCM Alg. 5), e.g. 0.07,15,80"
    )
    p.add_argument("--recipe", help="e.g. imagenet64-invert-nfe2")
    p.add_argument("--gen-steps", help="decode along these times (default 1 step tM -> eps)")
    p.add_argument("--num-steps", type=int, default=18, help="edm: Heun ODE Karras grid points")
    args = p.parse_args(argv)
    model, meta, device = _setup(args)
    x_all, y_all, idx_all = load_inputs(args)
    out = Path(args.out)
    if model.kind == "bcm":
        times, gen = _times(args, model)
        gen = sampling.parse_times(args.gen_steps, "--gen-steps") if args.gen_steps else gen
    elif model.kind == "edm":
        times = sampling.karras_times(args.num_steps, model.sigma_min, model.sigma_max)[::-1]
    elif model.kind != "igct":
        sampling.check_kind(model, ("bcm", "edm", "igct"), "bcm invert")

    def fn(pos):
        x, y, rng = _batch_inputs(model, args, x_all, y_all, idx_all, pos, device)
        if model.kind == "bcm":
            lat, n_inv = editing.invert(model, x, times, rng, y)
            rec, n_gen = editing.reconstruct(model, lat, times[-1], y, gen or None)
        elif model.kind == "edm":
            lat, n_inv = editing.heun_invert(model, x, times, y)
            rec, n_gen = sampling.heun(model, lat, times[::-1] + [0.0], y)
        else:
            from bcmcore import guided

            lat, n_inv = guided.igct_invert(model, x, y)
            rec, n_gen = guided.igct_edit(model, x, y, y, clamp=not _vector(model))
            n_gen -= n_inv
        mse = (
            ((rec - x) ** 2).flatten(1).mean(1).cpu()
            if _vector(model)
            else editing.mse_uint8(rec, x)
        )
        return {
            "latents": lat.float().cpu().numpy(),
            "recon": _images(model, rec),
            "orig": _images(model, x),
            "mse": mse.numpy(),
            "nfe_inv": np.full(len(pos), n_inv),
            "nfe": np.full(len(pos), n_inv + n_gen),
        }

    res = _run_sharded(len(idx_all), args.batch, fn, out, "invert")
    if res is not None:
        info = {
            "network": str(args.network),
            "kind": model.kind,
            "inversion_nfe": int(res["nfe_inv"][0]),
            "nfe": int(res["nfe"][0]),
            "mse": float(res["mse"].mean()),
            "images": len(idx_all),
        }
        grid = None if _vector(model) else _pairs_grid(res["orig"], res["recon"], args.grid)
        _write(
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
            ncol=2 * _cols(args.grid),
            info=info,
        )
        dist.print0(f"inversion NFE {info['inversion_nfe']}, reconstruction MSE {info['mse']:.5f}")
    dist.barrier()
    return 0


def _cols(n):
    return max(1, int(np.ceil(np.sqrt(n))))


def _pairs_grid(*columns_and_n):
    """Interleave image arrays column-wise: orig_i, result_i, ... (rows of the PNG hold several
    pairs)."""
    *cols, n = columns_and_n
    n = min(n, len(cols[0]))
    return np.stack([c[:n] for c in cols], 1).reshape(-1, *cols[0].shape[1:])


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


def edit_main(argv):
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
    p.add_argument("--mask-frac", type=float, default=0.5)
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="interpolate: slerp weights")
    p.add_argument("--quality", type=int, default=20, help="jpeg: PIL quality factor")
    p.add_argument("--target-class", help="class: the target label, or 'all' (a column per class)")
    p.add_argument("--w", type=float, default=1.0, help="class: guidance weight (paper convention)")
    p.add_argument("--num-steps", type=int, default=18, help="class (edm): Heun Karras grid points")
    p.add_argument("--clamp", action="store_true", help="clamp to [-1, 1] after each CM-style step")
    args = p.parse_args(argv)
    model, meta, device = _setup(args)
    x_all, y_all, idx_all = load_inputs(args)
    out, task = Path(args.out), args.task
    if task == "class":
        if args.target_class is None or y_all is None:
            raise UserError(
                "class editing needs --target-class and source labels (from --data or the npz)"
            )
        num = model.cfg.net.num_classes
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
            sampling.parse_times(args.gen_steps, "--gen-steps")
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
                model, x1, x2, times, sampling.parse_times(args.alphas, "--alphas"), r1, r2, y1, y2
            )
            rows = [_images(model, x1)] + [_images(model, r) for r in res] + [_images(model, x2)]
            return {"result": np.stack(rows, 1), "nfe": np.full(len(pos), nfe)}
        x, y, rng = _batch_inputs(model, args, x_all, y_all, idx_all, pos, device)
        if task in ("inpaint", "inpaint-refine", "cm-inpaint"):
            mask = _mask(args, x)
            shown = x * (1 - mask) + (-1 if not _vector(model) else 0) * mask
            if task == "inpaint":
                res, nfe = editing.inpaint(model, x, mask, times, gen, rng, y)
            elif task == "inpaint-refine":
                refine = sampling.parse_times(args.refine_steps or "", "--refine-steps")
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
        mse = sum(editing.mse_per_item(r.cpu(), x.cpu(), _vector(model)) for r in results) / len(
            results
        )
        rows = [_images(model, v) for v in inputs + results]
        return {"result": np.stack(rows, 1), "mse": mse.numpy(), "nfe": np.full(len(pos), nfe)}

    res = _run_sharded(n, args.batch, fn, out, task)
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
            if _vector(model)
            else res["result"][: max(1, args.grid // per_row)].reshape(-1, *res["result"].shape[2:])
        )
        _write(
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
