"""What every stage config shares: a field-naming error and the JSON round trip."""
from __future__ import annotations

import dataclasses


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
