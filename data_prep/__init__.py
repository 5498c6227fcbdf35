"""Converters from raw dataset formats to WebDataset shards (`bcm prep <format>`).

A format is one `Format` entry in the FORMATS table of a module of this package: `bcm prep` makes
each entry a subcommand with its flags, so adding a format is a converter and its entry, in one
file (data_prep never parses arguments: the CLI turns each option's kind into a checked flag).
"""

import importlib
import pkgutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """One `bcm prep` format."""

    help: str
    # (options namespace, shard_size) -> (splits, meta, totals) for bcmcore.shards.write_dataset
    splits: object
    src: str | None = None  # help of --src (required) when the format reads files
    resolution: int | None = None  # default of --resolution; None: the format has none
    # extra flags (flag, kind, default, help); kind: "count" (>= 0), "positive" (> 0), "text"
    options: tuple = ()


def formats():
    """{name: Format} of every module here that declares FORMATS, in module order."""
    table = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        table.update(getattr(importlib.import_module(f"{__name__}.{info.name}"), "FORMATS", {}))
    return table
