"""`bcm <command>`: one entry point; each command lives in the module that owns the concept."""

import importlib
import sys

# command -> (module, function taking argv and returning an exit code)
COMMANDS = {
    "train": ("bcmcore.train.cli", "main"),
    "launch": ("bcmcore.launch", "main"),
    "sample": ("bcmcore.apps", "sample_main"),
    "invert": ("bcmcore.apps", "invert_main"),
    "edit": ("bcmcore.apps", "edit_main"),
    "edit-rate": ("bcmcore.guided", "edit_rate_main"),
    "eval": ("bcmcore.metrics.cli", "main"),
    "prep": ("data_prep.__main__", "main"),
    "bench": ("bcmcore.bench", "main"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: bcm {" + ",".join(COMMANDS) + "} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, fn = COMMANDS[argv[0]]
    try:
        rc = getattr(importlib.import_module(module), fn)(argv[1:])
    except Exception as e:  # one clear line for the user's mistakes; tracebacks for ours
        from bcmcore.config import UserError

        if isinstance(e, UserError):
            print(f"bcm {argv[0]}: error: {e}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
