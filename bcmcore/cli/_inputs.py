"""What `bcm sample`, `invert` and `edit` share: the network flags and its loading, the input images
(--data shards or --input files), their batches and seeds, and named schedules' times."""

import numpy as np

from bcmcore import dist, runner, sampling
from bcmcore.cli._args import nonneg_int, parse_ids, parse_times, parser, positive_int
from bcmcore.config import UserError
from bcmcore.images import to_float, to_uint8_nhwc
from bcmcore.nets.facts import data_shape, is_vector, num_classes
from bcmcore.recipes import get_schedule


def network_parser(prog, handler):
    """The flags every network command takes: --network, --out, --batch, --device, --grid."""
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


def setup_network(args):
    """(model without grads, its file's metadata, device) on this rank's device."""
    from bcmcore.nets import load_network

    if args.batch < 1:
        raise UserError(f"--batch: expected a positive integer, got {args.batch}")
    _, _, _, device = dist.init(device=args.device)
    model, meta = load_network(args.network, device)
    return model.requires_grad_(False), meta, device


def saved(model, x):
    """Network output -> what we save: uint8 NHWC for images, float32 vectors for toy data."""
    return x.detach().float().cpu().numpy() if is_vector(model) else to_uint8_nhwc(x)


def input_args(p):
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


def to_model(model, x, device):
    x = x.to(device)
    return x.float() if is_vector(model) else to_float(x)


def batch_inputs(model, args, x_all, y_all, idx_all, pos, device):
    x = to_model(model, x_all[pos], device)
    y = y_all[pos].to(device) if (y_all is not None and num_classes(model)) else None
    return x, y, sampling.SeededRNG(args.seed + idx_all[pos], device)


def schedule_times(args, model, flag="--steps"):
    if getattr(args, "recipe", None):
        r = get_schedule(args.recipe).for_model(model)
        return list(r.times), list(r.gen_times)
    if not args.steps:
        raise UserError(f"{flag}: give the time steps (e.g. 0.07,15,80) or --recipe")
    return parse_times(args.steps, flag), []
