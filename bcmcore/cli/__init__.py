"""`bcm <command>`: the one entry point, and the only place argparse lives.

Every module of this package that declares `COMMANDS = {name: handler}` is one command family, a
handler taking argv and returning an exit code; adding a family is adding one file here. Modules
without COMMANDS (flags.py: workflow options -> checked flags) and _x modules are helpers. The
library below never parses arguments: a handler turns flags into plain values and calls it.
"""

import difflib
import importlib
import pkgutil
import sys

from bcmcore.config import UserError


def commands():
    """{command: handler} from every family module of this package."""
    table = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            table.update(
                getattr(importlib.import_module(f"{__name__}.{info.name}"), "COMMANDS", {})
            )
    return table


# command -> the setting to lower when a batch does not fit in memory
BATCH_SETTING = {
    "train": "train.batch_gpu (per-process batch; accumulation rounds keep train.batch)",
    "eval": "eval.batch_size (datasets.<ds>.eval.batch_size in the workflow config)",
    "sample": "--batch",
    "invert": "--batch",
    "edit": "--batch",
    "edit-rate": "--batch",
    "bench": "--batch",
}


def resource_error(command, e):
    """Out of memory / disk full -> one UserError line (what to lower, which file), else None."""
    from bcmcore.util import disk_full

    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    oom = isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
    if oom or (isinstance(e, RuntimeError) and "can't allocate memory" in text):
        return UserError(
            f"out of memory ({text[:200]}); lower {BATCH_SETTING.get(command, 'the batch size')}. "
            f"Files already written are intact: a rerun resumes"
        )
    if isinstance(e, OSError) and getattr(e, "filename", None):
        return disk_full(e.filename, e)
    return None


def _own_module(command):
    """{command: handler} from the family module named like the command, if it has it: `bcm launch`
    (which waits for a whole stage) and `bcm train` start without importing the other families, some
    of which import torch (seconds per workflow job)."""
    if not command.isidentifier() or command.startswith("_"):
        return {}
    try:
        module = importlib.import_module(f"{__name__}.{command}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{command}":
            raise
        return {}
    table = getattr(module, "COMMANDS", {})
    return table if command in table else {}


def version():
    """The installed distribution's version (the package's own when run from a bare checkout)."""
    from importlib import metadata

    try:
        return metadata.version("bcm-pipeline")
    except metadata.PackageNotFoundError:
        from bcmcore import __version__

        return __version__


def summary(handler):
    """A command's one-line summary: the first line of its handler's docstring."""
    return (handler.__doc__ or "").strip().split("\n")[0]


def usage(table):
    """`bcm --help`: every command with its one-line summary."""
    width = max(map(len, table)) + 2
    rows = "\n".join(f"  {name:{width}}{summary(table[name])}" for name in sorted(table))
    return (
        "usage: bcm <command> [options]   (bcm <command> --help: its options and defaults)\n\n"
        "Train, sample, invert, edit and evaluate consistency models (iCT, BCM, iGCT, EDM).\n\n"
        f"commands:\n{rows}\n\n"
        "  -h, --help   this list\n  --version    the installed version\n\n"
        "The whole pipeline: snakemake --profile cluster/local all (README.md)."
    )


def unknown(command, table):
    """The error line of a mistyped command, with the closest commands (difflib)."""
    near = difflib.get_close_matches(command, list(table), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return f"bcm: error: unknown command {command!r}{hint} (bcm --help lists them)"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:
        print(f"bcm {version()}")
        return 0
    table = (argv and _own_module(argv[0])) or commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(table), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in table:
        print(unknown(argv[0], table), file=sys.stderr)
        return 2
    return run_command(argv[0], table[argv[0]], argv[1:])


def environment_error(e):
    """An OSError of the user's files or machine (read-only, not a directory, exists, missing,
    permission) -> one UserError line naming the file, else None."""
    if not isinstance(e, OSError) or isinstance(e, (TimeoutError, ConnectionError)):
        return None
    names = [n for n in (e.filename, getattr(e, "filename2", None)) if n is not None]
    what = e.strerror or type(e).__name__
    where = " -> ".join(str(n) for n in names) or "a file"
    return UserError(f"{where}: {what}")


def run_command(command, handler, args):
    """The error boundary of every command: the user's mistakes and a broken environment give one
    line and an exit code; only our own bugs give a traceback."""
    try:
        rc = handler(args)
    except KeyboardInterrupt:
        print(f"bcm {command}: interrupted (files already complete are intact)", file=sys.stderr)
        return 130
    except Exception as e:  # the one clear line for the user's mistakes; tracebacks for ours
        e = resource_error(command, e) or environment_error(e) or e
        if not isinstance(e, UserError):
            raise
        print(f"bcm {command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 130 / 143 after SIGINT / SIGTERM
    return int(rc or 0)
