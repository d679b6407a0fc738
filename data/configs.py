"""What every config shares: a field-naming error, the JSON round trip and the number check.

Every number has a range: an integer field holds an int (not a bool, not 40.5) within int64,
a float field a finite number within float32's range (every tensor here is float32: 1e300
would be inf by the first op), whatever the field's own bounds; `from_dict` checks each
value against its field's type before the config's own checks run.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing

INT64_MAX = 2 ** 63 - 1
FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
    """A config field holds an invalid value; `field` names it so the CLI can name the option."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class JSONConfig:
    """Mixin for a frozen dataclass config: to_dict for config.json, from_dict that refuses
    unknown keys (a typo in a config file must not silently fall back to a default)."""

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config"):
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ConfigError(unknown[0], f"unknown key in {source} (valid: {', '.join(sorted(valid))})")
        hints = typing.get_type_hints(cls)
        try:
            config = cls(**values)  # the fields' own checks give the most precise message
        except ConfigError:
            raise
        except (TypeError, ValueError, OverflowError):  # a value of the wrong type got past them
            for name, value in values.items():
                check_type(name, value, hints[name])
            raise
        for name, value in values.items():  # what the fields' checks let through (a bool for an int)
            check_type(name, value, hints[name])
        return config


def _optional(hint) -> tuple[bool, object]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, hint


def check_type(name: str, value, hint) -> None:
    """A ConfigError naming `name` unless `value` (from a config file, a grid or a caller) is
    of the field's annotated type: int (not a bool, not 40.5), float (a number, not a bool or
    a string), str, bool, dict, a tuple of those (a list, or one value of a number list), or
    None for `X | None`. The numbers' ranges are the fields' own checks (check_number)."""
    optional, hint = _optional(hint)
    if value is None and optional:
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args[1:] == (Ellipsis,):
        items = value if isinstance(value, (list, tuple)) else None
        if items is None and args[0] in (int, float):
            items = [value]  # one number for a list of numbers
        if items is None:
            raise ConfigError(name, f"must be a list of {args[0].__name__}, got {_shown(value)}")
        for item in items:
            check_type(name, item, args[0])
        return
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif hint in (str, bool, dict):
        ok = isinstance(value, hint)
    else:
        return
    if not ok:
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                dict: "an object"}[hint]
        shown = _shown(value)
        if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
            shown += f" (a {type(value).__name__})"
        raise ConfigError(name, f"must be {kind}{' or none' if optional else ''}, got {shown}")


def _shown(value) -> str:
    """A refused value as the message shows it: nan, inf, 0.5, 3, 'abc'."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return repr(value)
            return repr(value) if math.isfinite(number) else str(number)
        return repr(value)
    return str(int(value)) if isinstance(value, numbers.Integral) else str(float(value))


def _bound(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_number(name: str, value, *, low=None, high=None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, optional: bool = False) -> None:
    """Refuse, with a ConfigError naming `name`, a hyperparameter that is not a number in the
    range: nan and inf always (also as the strings a command line gives), bools, strings,
    an int field given 2.5; low/high bound the range, open at an end when *_open is set.

        check_number("lr", nan, low=0, low_open=True)
        -> ConfigError("lr: must be finite and > 0, got nan")
    """
    if optional and value is None:
        return
    if low is not None and high is not None:
        where = (f"in {'(' if low_open else '['}{_bound(low)}, "
                 f"{_bound(high)}{')' if high_open else ']'}")
    elif low is not None:
        where = f"{'>' if low_open else '>='} {_bound(low)}"
    elif high is not None:
        where = f"{'<' if high_open else '<='} {_bound(high)}"
    else:
        where = ""
    kind = "an integer" if integer else "finite"
    rule = f"{kind} and {where}" if where and not integer else f"{kind} {where}".strip()
    rule = f"None or {rule}" if optional else rule
    numeric = (not isinstance(value, bool)
               and isinstance(value, numbers.Integral if integer else numbers.Real))
    if numeric and abs(value) > (INT64_MAX if isinstance(value, numbers.Integral) else FLOAT32_MAX):
        if isinstance(value, numbers.Integral) or math.isfinite(value):
            limit = "int64" if isinstance(value, numbers.Integral) else "float32"
            shown = _shown(value)
            shown = shown if len(shown) <= 30 else f"a number of {len(shown)} digits"
            raise ConfigError(name, f"must be {rule}, got {shown} (past the range of {limit})")
    ok = numeric and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        shown = _shown(value)
        if not numeric and shown.startswith("'") or isinstance(value, bool):
            shown += f" (a {type(value).__name__})"
        raise ConfigError(name, f"must be {rule}, got {shown}")
