"""`bcm import --format FMT SRC --out NET.pt|NET.safetensors`: an authors' checkpoint -> a project
network file."""

from bcmcore.cli._args import parser, positive_int
from bcmcore.cli.convert import add_out_argument, check_out_suffix


def import_parser():
    """The parser of `bcm import` (also what checks a workflow experiment's `import` flags)."""
    from bcmcore.imports import FORMATS

    p = parser(
        "bcm import",
        "Write a bcm-network/1 file (.pt or .safetensors, by the suffix of --out) from an authors' "
        "released checkpoint (docs/imports.md). "
        "EDM .pkl files are read without executing the code they embed.",
    )
    p.add_argument(
        "src",
        help="ema_<rate>_<step>.pt (bcm-ict-torch), cd_*/ct_*/edm_*.pt (openai-cm) or "
        "network-snapshot-*.pkl (igct-edm)",
    )
    p.add_argument("--format", required=True, help=f"checkpoint format: {' | '.join(FORMATS)}")
    add_out_argument(p, "results/<ds>/runs/<exp>/network-final.pt")
    p.add_argument(
        "--kind",
        default=None,
        choices=["cm", "bcm", "edm"],
        help="bcm-ict-torch: cm (iCT) or bcm, default read off the tensors; openai-cm: cm (CD/CT) "
        "or edm (teacher), default from the file name (cd_*, ct_* / edm_*)",
    )
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=None,
        help="image size (bcm-ict-torch default 64; openai-cm default 64 or 256, read off the "
        "released widths)",
    )
    p.add_argument(
        "--head-channels",
        type=positive_int,
        default=64,
        help="attention head width (bcm-ict-torch, openai-cm; released: 64)",
    )
    p.add_argument(
        "--clsloc-labels",
        default=None,
        metavar="MAP_CLSLOC_TXT",
        help="bcm-ict-torch, openai-cm: permute the class embedding so label k is the "
        "npz/map_clsloc class k+1 (for shards from the imagenet-npz prep); default: the authors' "
        "sorted-WNID labels",
    )
    return p


def import_(argv):
    """Convert an authors' released checkpoint into a project network file."""
    a = import_parser().parse_args(argv)
    check_out_suffix(a.out, a.src)
    from bcmcore.imports import import_checkpoint

    model = import_checkpoint(
        a.format,
        a.src,
        a.out,
        kind=a.kind,
        resolution=a.resolution,
        head_channels=a.head_channels,
        clsloc_labels=a.clsloc_labels,
    )
    n = sum(t.numel() for t in model.state_dict().values())
    print(f"bcm import: {a.src} -> {a.out} (kind {model.cfg.kind}, {n:,} values, fp32)")
    return 0


COMMANDS = {"import": import_}
