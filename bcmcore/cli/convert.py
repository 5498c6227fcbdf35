"""`bcm convert SRC --out DST`: a network file between its two containers, `.pt` and
`.safetensors` (bcmcore/nets/io.py)."""

from bcmcore.cli._args import parser
from bcmcore.config import UserError


def convert_parser():
    return parser(
        "bcm convert",
        """Rewrite a network file in the other container, tensors bit for bit: network-*.pt (a
        plain dict read with torch's weights-only loader) <-> .safetensors (tensors in the body;
        format version, kind, model config, step, run config and provenance as JSON in the header
        metadata; loading parses JSON and copies bytes, so it can never run code from the file).
        The container is picked by the suffix of --out. Every bcm command that takes --network
        reads either.

        example: bcm convert results/cifar10/runs/ict/network-final.pt --out ict.safetensors""",
    )


def add_out_argument(p, example):
    p.add_argument(
        "--out",
        required=True,
        help=f"network file to write: *.pt or *.safetensors (the suffix picks the container), "
        f"e.g. {example}",
    )


def check_out_suffix(out, src=None):
    """--out ends in .pt or .safetensors, and is not the source file itself."""
    from pathlib import Path

    from bcmcore.nets.io import SUFFIXES

    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise UserError(
            f"--out {out}: expected a file name ending in {' or '.join(SUFFIXES)} "
            f"(the suffix picks the container), got {out.suffix or 'no suffix'!r}"
        )
    if src is not None and out.exists() and out.resolve() == Path(src).resolve():
        raise UserError(f"--out {out}: the same file as the source; name another file")


def convert(argv):
    """Convert a network file between .pt and .safetensors (tensors bit for bit)."""
    p = convert_parser()
    p.add_argument("src", help="network file to read (.pt or .safetensors; told apart by content)")
    add_out_argument(p, "network-final.safetensors")
    a = p.parse_args(argv)
    check_out_suffix(a.out, a.src)
    from bcmcore.nets.io import build_from_record, read_record, write_record
    from bcmcore.util import sha256_file

    record = read_record(a.src)
    model, _ = build_from_record(a.src, record)  # refuse a file whose weights do not fit its config
    source = {"file": str(a.src), "sha256": sha256_file(a.src)}
    record["provenance"] = {**(record.get("provenance") or {}), "converted_from": source}
    write_record(a.out, record)
    n = sum(t.numel() for t in record["state_dict"].values())
    print(
        f"bcm convert: {a.src} -> {a.out} (kind {record['kind']}, step {record['step']}, "
        f"{n:,} values)"
    )
    return 0


COMMANDS = {"convert": convert}
