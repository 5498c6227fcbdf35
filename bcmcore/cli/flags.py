"""Workflow option mappings ({key: value}) -> command-line flags, checked against the command's own
parser.

The workflow passes `prep.args`, `grid` and `apps.<task>` to `bcm prep` / `bcm sample` / `bcm edit`
as `--key value` flags. Two rules make that safe: keys are checked against the argparse parser of
the very command they reach (one source: a flag added there is accepted here, a typo stops the
workflow at start-up with its config path), and every key and value is shell-quoted, so no config
string ever becomes shell syntax."""

import argparse
import importlib
import math
import re
import shlex

from bcmcore.config import ConfigError

KEY_RE = re.compile(
    r"^[a-z][a-z0-9_]*$"
)  # also the schema's propertyNames pattern for these mappings

# The tasks of `bcm edit <task>`, in one place: the command's choices and handlers
# (cli/edit.py), the workflow's app_grid wildcard (eval.smk) and its check of apps.<task> keys.
EDIT_TASKS = (
    "interpolate",
    "inpaint",
    "inpaint-refine",
    "cm-inpaint",
    "super-resolution",
    "colorize",
    "jpeg",
    "class",
)

# command -> "module:function" returning its argparse parser (the parser `bcm <command>` itself
# parses with)
PARSERS = {
    "prep": "bcmcore.cli.prep:_parser",
    "sample": "bcmcore.cli.sample:sample_parser",
    "edit": "bcmcore.cli.edit:edit_parser",
    "import": "bcmcore.cli.imports:import_parser",
}


def parser(command, sub=None):
    """The argparse parser of `bcm <command> [sub]` (sub: a subcommand such as a prep format)."""
    module, fn = PARSERS[command].split(":")
    p = getattr(importlib.import_module(module), fn)()
    if sub is None:
        return p
    subs = subcommands(p)
    if sub not in subs:
        raise ConfigError(f"expected one of {sorted(subs)}, got {sub!r}")
    return subs[sub]


def subcommands(p):
    """{name: subparser} of a parser with subcommands (data_prep formats)."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flag(key):
    return "--" + key.replace("_", "-")


def check(p, options, where, reserved=()):
    """Each {key: value} must be a flag of parser `p` taking such a value; ConfigError names
    where.key.

    reserved: keys the workflow sets itself (e.g. out, network): giving them again is an error too.
    """
    if options is None:
        return
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a mapping of flags, got {options!r}")
    actions = {
        a.dest: a
        for a in p._actions
        if a.option_strings and a.dest not in ("help",) + tuple(reserved)
    }
    known = ", ".join(sorted(actions))
    for key, value in options.items():
        at = f"{where}.{key}"
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise ConfigError(f"{at}: a flag name must match {KEY_RE.pattern}")
        action = actions.get(key)
        if action is None or flag(key) not in action.option_strings:
            raise ConfigError(f"{at}: unknown flag of `{p.prog}` (known: {known})")
        if action.nargs == 0:  # store_true: a bare flag
            if not isinstance(value, bool):
                raise ConfigError(f"{at}: expected true/false, got {value!r}")
            continue
        if value is None or value is False:
            continue
        if isinstance(value, (dict, list, bool)):
            raise ConfigError(f"{at}: expected a single value, got {value!r}")
        text = str(value)
        try:
            parsed = action.type(text) if callable(action.type) else text
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            if isinstance(e, argparse.ArgumentTypeError):  # our own types say what they expect
                raise ConfigError(f"{at}: {e}") from None
            name = getattr(action.type, "__name__", "value")
            raise ConfigError(f"{at}: expected {name}, got {value!r}") from None
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ConfigError(f"{at}: expected a finite number, got {value!r}")
        if action.choices is not None and parsed not in action.choices:
            raise ConfigError(f"{at}: expected one of {list(action.choices)}, got {value!r}")


def render(options):
    """{key: value} -> ' --key value ...', every token shell-quoted (true: a bare flag; false/null:
    none)."""
    out = ""
    for key, value in (options or {}).items():
        name = shlex.quote(flag(str(key)))
        if value is True:
            out += f" {name}"
        elif value is not None and value is not False:
            out += f" {name} {shlex.quote(str(value))}"
    return out
