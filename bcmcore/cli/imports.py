"""`bcm import --format FMT SRC --out NET.pt`: an authors' checkpoint -> a project network file."""

from bcmcore.cli._args import parser, positive_int


def import_(argv):
    from bcmcore.imports import FORMATS

    p = parser(
        "bcm import",
        "Write a bcm-network/1 file from an authors' released checkpoint (docs/imports.md). "
        "EDM .pkl files are read without executing the code they embed.",
    )
    p.add_argument(
        "src", help="ema_<rate>_<step>.pt (bcm-ict-torch) or network-snapshot-*.pkl (igct-edm)"
    )
    p.add_argument("--format", required=True, help=f"checkpoint format: {' | '.join(FORMATS)}")
    p.add_argument(
        "--out",
        required=True,
        help="network file to write, e.g. results/<ds>/runs/<exp>/network-final.pt",
    )
    p.add_argument(
        "--kind", default=None, help="bcm-ict-torch: cm (iCT) or bcm; default: read off the tensors"
    )
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=64,
        help="bcm-ict-torch image size (released: 64)",
    )
    p.add_argument(
        "--head-channels",
        type=positive_int,
        default=64,
        help="bcm-ict-torch attention head width (released: 64)",
    )
    p.add_argument(
        "--clsloc-labels",
        default=None,
        metavar="MAP_CLSLOC_TXT",
        help="bcm-ict-torch: permute the class embedding so label k is the npz/map_clsloc "
        "class k+1 "
        "(for shards from the imagenet-npz prep); default: the authors' sorted-WNID labels",
    )
    a = p.parse_args(argv)
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
