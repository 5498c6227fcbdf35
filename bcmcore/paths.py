"""The one rule for user-given names that become parts of file names, and the one check that an
output path stays inside its output folder (docs/interfaces.md: every output lives under --out)."""

import re
from pathlib import Path

from bcmcore.config import ConfigError, UserError

# A single path component: letters, digits, '_', '-', '.', not starting with '.' or '-' (no '..',
# no hidden files, no flags), at most 64 characters. Experiment and dataset names (Snakemake
# wildcards) follow the stricter ^[a-z][a-z0-9_]*$ of workflow/schemas/config.schema.yaml, a subset.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def check_name(name, where):
    """`name` if it is a safe file-name part, else a ConfigError naming `where`."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        raise ConfigError(
            f"{where}: {name!r} is not a valid name (it becomes part of a file name: letters, "
            f"digits, '_', '-', '.', starting with a letter or digit, at most 64 characters)"
        )
    return name


def inside(out_dir, *parts):
    """out_dir/parts..., resolved; a UserError if it would land outside out_dir (a name holding
    '../', an absolute path, a symlink pointing away)."""
    root = Path(out_dir).resolve()
    path = root.joinpath(*map(str, parts)).resolve()
    if path != root and root not in path.parents:
        raise UserError(
            f"{Path(out_dir).joinpath(*map(str, parts))}: outside the output folder {out_dir}"
        )
    return path
