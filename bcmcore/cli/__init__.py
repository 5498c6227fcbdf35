"""`bcm <command>`: the one entry point, and the only place argparse lives.

Every module of this package is one command family and declares `COMMANDS = {name: handler}`, a
handler taking argv and returning an exit code; adding a family is adding one file here. The library
below never parses arguments: a handler turns flags into plain values and calls it.
"""

import importlib
import pkgutil
import sys

from bcmcore.config import UserError


def commands():
    """{command: handler} from every family module of this package (_x modules are helpers)."""
    table = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            table.update(importlib.import_module(f"{__name__}.{info.name}").COMMANDS)
    return table


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    table = commands()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in table:
        print("usage: bcm {" + ",".join(sorted(table)) + "} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        rc = table[argv[0]](argv[1:])
    except UserError as e:  # the one clear line for the user's mistakes; tracebacks for ours
        print(f"bcm {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)
