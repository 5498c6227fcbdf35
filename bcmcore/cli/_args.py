"""Argument helpers shared by the command families: id ranges, time lists, zigzag pairs, checked
numbers."""

import argparse
import inspect
import math

from bcmcore.config import UserError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (as EDM's and k-diffusion's scripts do), and keeps
    the line breaks of descriptions and epilogs (recipe tables)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or not shows_default(action.default):
            return text
        return f"{text} (default: %(default)s)"


def shows_default(default):
    """A default worth printing: not unset (None), not a store_true's False, not suppressed."""
    return not (default is None or default is False or default == argparse.SUPPRESS)


class Parser(argparse.ArgumentParser):
    """argparse with defaults shown; subcommand parsers (`add_subparsers`) are of this class too."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        if kw.get("description"):
            kw["description"] = inspect.cleandoc(kw["description"])
        super().__init__(*args, **kw)

    def add_argument(self, *args, **kw):
        if kw.get("help") is None and shows_default(kw.get("default")):
            kw["help"] = "(default: %(default)s)"  # an option without help still shows its default
        return super().add_argument(*args, **kw)


def parser(prog, description=None, **kw):
    return Parser(prog=prog, description=description, **kw)


def parse_ids(text, flag):
    """'0-63' or '0,5,7-9' -> [0, ..., 63] / [0, 5, 7, 8, 9]."""
    ids = []
    try:
        for part in str(text).split(","):
            a, _, b = part.strip().partition("-")
            ids += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise UserError(
            f"{flag}: expected numbers and ranges such as 0-63 or 0,5,7-9, got {text!r}"
        ) from None
    if not ids or min(ids) < 0:
        raise UserError(f"{flag}: expected non-negative numbers, got {text!r}")
    return ids


def parse_times(text, flag="--steps"):
    """'80,2.4,0.002' -> [80.0, 2.4, 0.002]."""
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def parse_pairs(text, flag="--zigzag"):
    """'0.1:1.2,0.12:0.4' -> [(0.1, 1.2), (0.12, 0.4)] (zigzag rounds eps_i:t_i)."""
    try:
        pairs = [tuple(float(v) for v in p.split(":")) for p in str(text).split(",") if p.strip()]
    except ValueError:
        pairs = None
    if pairs is None or any(len(p) != 2 for p in pairs):
        raise UserError(
            f"{flag}: expected comma-separated eps:t pairs such as 0.1:1.2, got {text!r}"
        )
    return pairs


def _cli_number(kind, low, what, high=math.inf):
    """An argparse `type`: a finite `kind` (int or float) in [low, high]; argparse names the
    flag."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _cli_number(int, 1, "a positive integer")
nonneg_int = _cli_number(int, 0, "an integer >= 0")
finite_float = _cli_number(float, -math.inf, "a finite number")
nonneg_float = _cli_number(float, 0.0, "a number >= 0")
positive_float = _cli_number(float, 1e-300, "a number > 0")
fraction = _cli_number(float, 0.0, "a fraction in [0, 1]", 1.0)
jpeg_quality = _cli_number(int, 1, "a JPEG quality in 1..95", 95)
