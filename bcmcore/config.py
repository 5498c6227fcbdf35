"""Frozen dataclasses from the resolved run config, with one clear message per bad key.

Each module declares the dataclass of its own config section next to its code (nets.NetConfig,
losses.*, train.TrainConfig, ...) and builds it with `from_dict`, so the loop never sees a dict.
"""

import dataclasses
import json
import math
import types
import typing
from pathlib import Path


class UserError(ValueError):
    """Bad input from the user (a file, a key, a flag): `bcm` prints the message alone and exits
    2."""


class ConfigError(UserError):
    """A bad config value; the message names the key (dotted path) and what was expected.

    `key`: the field it is about when a dataclass raises it (from_dict prefixes the path)."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key, self.detail = key, message


# ------------------------------------------------------------------------------------------ bounds


@dataclasses.dataclass(frozen=True)
class Bound:
    """Numeric bounds of a config field: `x: Annotated[float, Bound(gt=0)]`. Checked for every
    dataclass decorated with @checked, however it is built (from_dict or in code)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, v):
        return not (
            (self.gt is not None and not v > self.gt)
            or (self.ge is not None and not v >= self.ge)
            or (self.lt is not None and not v < self.lt)
            or (self.le is not None and not v <= self.le)
        )

    def text(self):
        parts = [f"{op} {b:g}" for op, b in ((">", self.gt), (">=", self.ge)) if b is not None]
        parts += [f"{op} {b:g}" for op, b in (("<", self.lt), ("<=", self.le)) if b is not None]
        return "a number " + " and ".join(parts)


Positive = Bound(gt=0)
NonNegative = Bound(ge=0)
Probability = Bound(ge=0, lt=1)  # dropout rates, EMA decays, Adam betas
# the field types the config dataclasses share
Pos = typing.Annotated[int, Positive]
Count = typing.Annotated[int, NonNegative]
PosFloat = typing.Annotated[float, Positive]
Prob = typing.Annotated[float, Probability]


def _bound_errors(value, tp, key):
    """The first bound `value` breaks under type hint `tp` (recursing into unions and tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        for bound in args[1:]:
            if isinstance(bound, Bound) and isinstance(value, (int, float)):
                if not bound.holds(value):
                    return f"{key}: expected {bound.text()}, got {value!r}"
        return _bound_errors(value, args[0], key)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for a in args:
            if typing.get_origin(a) is typing.Annotated or typing.get_origin(a) in (tuple, list):
                return _bound_errors(value, a, key)
        return None
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        items = args if origin is tuple and args and args[-1] is not Ellipsis else None
        for i, v in enumerate(value):
            item = items[i] if items and i < len(items) else (args[0] if args else typing.Any)
            err = _bound_errors(v, item, f"{key}[{i}]")
            if err:
                return err
    return None


def checked(cls):
    """Class decorator (below @dataclass, which calls __post_init__ only if the class has one when
    it is made): every field's Bound is checked when an instance is made, before the class's
    own __post_init__ (its relations between fields, e.g. sigma_min < sigma_max)."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self), include_extras=True)
        for f in dataclasses.fields(self):
            err = _bound_errors(getattr(self, f.name), hints[f.name], f.name)
            if err:
                raise ConfigError(err, key=f.name)
        if own is not None:
            own(self)

    cls.__post_init__ = __post_init__
    return cls


def fail(key, message):
    """A relation between fields does not hold: the error names `key` (from_dict adds the path)."""
    raise ConfigError(f"{key}: {message}", key=key)


def _check(value, tp, where):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        value = _check(value, args[0], where)
        err = _bound_errors(value, tp, where)
        if err:
            raise ConfigError(err)
        return value
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else typing.Any
        return tuple(_check(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data, where=""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError naming
    the key."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key '{key}'")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if e.key is None or not where:
            raise
        raise ConfigError(f"{where}.{e.detail}") from None


def to_dict(obj):
    """Plain JSON-able dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def load_json(path):
    """Read a resolved run config; a missing or malformed file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: run config not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def load_yaml(path, text=None):
    """Read a YAML file the one way the project does (workflow configs, launcher and stages files,
    eval specs): a duplicate key or a syntax error is one error naming the file and line, never a
    silently dropped value."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"{path}:{key_node.start_mark.line + 1}: duplicate key {key!r} "
                    f"(first on line {seen[key]}): remove one of them"
                )
            seen[key] = key_node.start_mark.line + 1
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        text = Path(path).read_text() if text is None else text
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{line}: not valid YAML ({problem})") from None
