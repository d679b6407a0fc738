"""What every config shares: a field-naming error, the JSON round trip and the number check."""
from __future__ import annotations

import dataclasses
import math
import numbers


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
        return cls(**values)


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
