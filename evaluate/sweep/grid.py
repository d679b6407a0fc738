"""A sweep's grid file -> its points, each a resolved (generate, sae, evaluate) config triple.

Grid file (JSON):

    {
      "base": {"generate": {"n_features": 20, "d_hidden": 5},     # stage fields every point shares
               "sae": {"methods": ["l1", "topk"]}, "evaluate": {"max_rows": 4000}},
      "axes": {                                                   # the Cartesian product of these
        "generate.feature_probability": [0.1, 0.03],              # <stage>.<field>
        "sae.params.l1.l1_coefficient": [0.01, 0.03],             # sae.params.<method|*>.<key>
        "generate.n_features,generate.d_hidden": [[20, 5], [40, 10]],  # zipped: move together
        "seed": [0, 1, 2]                                         # every stage's seed at once
      }
    }

Every key of "base" and "axes" is checked against the stage dataclasses, and every point is
built (so validated) before anything runs: a bad grid fails at once, naming the file and key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from unsuperpose.data.configs import ConfigError

STAGES = ("generate", "sae", "evaluate")
MAX_POINTS = 10_000  # a larger grid is refused unless forced: most likely an axis too many
SEED_AXIS = "seed"
GRID_KEYS = ("base", "axes")


class GridError(ValueError):
    """The grid file is unreadable or names a field, value or stage that does not exist."""


def stage_classes() -> dict[str, type]:
    from unsuperpose.evaluate.config import EvaluateConfig
    from unsuperpose.generate.config import GenerateConfig
    from unsuperpose.sae.config import SAEStageConfig

    return {"generate": GenerateConfig, "sae": SAEStageConfig, "evaluate": EvaluateConfig}


def canonical_hash(obj) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of `obj`."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Point:
    """One grid point: the swept values that made it and the three resolved stage configs."""

    values: dict
    """axis key -> this point's value (a zipped key's value is its list)."""
    configs: dict
    """stage -> resolved config (GenerateConfig, SAEStageConfig, EvaluateConfig)."""

    def config_dicts(self) -> dict:
        return {stage: self.configs[stage].to_dict() for stage in STAGES}

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the three resolved configs: the point's cache key."""
        return canonical_hash(self.config_dicts())

    @property
    def generate_hash(self) -> str:
        """The generate config's own hash: points that share it share one stage-1 run."""
        return canonical_hash(self.configs["generate"].to_dict())

    @property
    def columns(self) -> dict:
        """The swept values as table columns: a zipped key gives one column per field."""
        out = {}
        for key, value in self.values.items():
            paths = key.split(",")
            out.update(zip(paths, value) if len(paths) > 1 else [(key, value)])
        return out


@dataclass(frozen=True)
class Grid:
    path: Path
    points: list[Point]
    axes: dict
    """axis key -> its values, as in the file."""

    @property
    def columns(self) -> list[str]:
        """Names of the swept-value columns, in file order."""
        return [p for key in self.axes for p in key.split(",")]


def _fail(path: Path, key: str, message: str):
    raise GridError(f"{path}: {key!r}: {message}")


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_path(path: Path, key: str, classes: dict, whole_params: bool = False) -> list[str]:
    """`key` ("sae.dict_ratio", "sae.params.l1.k", "seed") split into its parts, checked;
    `whole_params`: "sae.params" alone is allowed (the base sets the whole dict)."""
    if key == SEED_AXIS:
        return [key]
    parts = key.split(".")
    stage = parts[0]
    if stage not in classes or len(parts) < 2:
        _fail(path, key, f"expected <stage>.<field> with a stage of {', '.join(STAGES)}, "
                         f"or {SEED_AXIS!r}")
    names = _field_names(classes[stage])
    if parts[1] not in names:
        _fail(path, key, f"unknown field {parts[1]!r} of {stage} (valid: {', '.join(names)})")
    if stage == "sae" and parts[1] == "params":
        if len(parts) != 4 and not (whole_params and len(parts) == 2):
            _fail(path, key, "expected sae.params.<method or *>.<parameter>")
    elif len(parts) != 2:
        _fail(path, key, f"{stage}.{parts[1]} has no sub-fields")
    return parts


def _set(values: dict, parts: list[str], value) -> None:
    """Write one axis value into the per-stage field dicts."""
    if parts == [SEED_AXIS]:
        for stage in STAGES:
            values[stage]["seed"] = value
    elif len(parts) == 4:  # sae.params.<method>.<key>
        params = {m: dict(p) for m, p in values["sae"].get("params", {}).items()}
        params.setdefault(parts[2], {})[parts[3]] = value
        values["sae"]["params"] = params
    else:
        values[parts[0]][parts[1]] = value


def _coerce(cls, values: dict) -> dict:
    """Numbers as their field's type, so that 1 and 1.0 give one config (and one hash); a
    scalar for a tuple field (feature_probability: 0.1) becomes a one-element tuple."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        v, kind = out[f.name], str(f.type)
        if kind.startswith("tuple") and not isinstance(v, (list, tuple)):
            v = (v,)
        if "float" in kind and not isinstance(v, bool):
            v = (tuple(float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v)
                 if isinstance(v, (list, tuple)) else float(v) if isinstance(v, int) else v)
        out[f.name] = v
    return out


def _blame(parsed: list, stage: str, field: str) -> str:
    """The axis key that sets `stage.field`, else where the base sets it."""
    for key, parts, _ in parsed:
        if any(p[:2] == [stage, field] for p in parts):
            return key
    return f"base.{stage}.{field}"


def load_grid(path: str | Path, force: bool = False) -> Grid:
    """Read, check and expand a grid file; a GridError names the file and the key at fault.
    A grid of more than MAX_POINTS points is refused, naming its count, unless `force`."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: file not found")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GridError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: expected a JSON object with keys {', '.join(GRID_KEYS)}")
    for key in raw:
        if key not in GRID_KEYS:
            _fail(path, key, f"unknown top-level key (valid: {', '.join(GRID_KEYS)})")
    classes = stage_classes()
    base = raw.get("base", {})
    if not isinstance(base, dict):
        _fail(path, "base", "expected an object {stage: {field: value}}")
    for stage, fields in base.items():
        if stage not in classes:
            _fail(path, f"base.{stage}", f"unknown stage (valid: {', '.join(STAGES)})")
        if not isinstance(fields, dict):
            _fail(path, f"base.{stage}", "expected an object of config fields")
        for name in fields:
            _check_path(path, f"{stage}.{name}", classes, whole_params=True)
    axes = raw.get("axes", {})
    if not isinstance(axes, dict):
        _fail(path, "axes", "expected an object {axis key: [values]}")
    parsed = []
    for key, values in axes.items():
        parts = [_check_path(path, p.strip(), classes) for p in key.split(",")]
        if not isinstance(values, list) or not values:
            _fail(path, key, "an axis needs a non-empty list of values")
        if len(parts) > 1 and not all(isinstance(v, list) and len(v) == len(parts) for v in values):
            _fail(path, key, f"a zipped axis of {len(parts)} fields needs a list of "
                             f"{len(parts)}-element lists")
        parsed.append((key, parts, values))

    count = math.prod(len(values) for _, _, values in parsed)
    if count > MAX_POINTS and not force:
        raise GridError(f"{path}: {count:,} points, more than {MAX_POINTS:,}; check its axes, "
                        f"or pass --force to run them all")
    points = []
    for combo in itertools.product(*(values for _, _, values in parsed)):
        values = {stage: dict(base.get(stage, {})) for stage in STAGES}
        for (_, parts, _), value in zip(parsed, combo):
            for p, v in (zip(parts, value) if len(parts) > 1 else [(parts[0], value)]):
                _set(values, p, v)
        at = dict(zip([k for k, _, _ in parsed], combo))
        configs = {}
        for stage, cls in classes.items():
            try:
                configs[stage] = cls.from_dict(_coerce(cls, values[stage]), source=str(path))
            except ConfigError as err:
                _fail(path, _blame(parsed, stage, err.field), f"{err.message} (at point {at})")
            except (TypeError, ValueError) as err:
                _fail(path, stage, f"{err} (at point {at})")
        points.append(Point(at, configs))
    hashes = [p.hash for p in points]
    if len(set(hashes)) < len(hashes):
        raise GridError(f"{path}: two grid points resolve to the same configs (an axis repeats "
                        "a value, or sets a field to its default twice)")
    return Grid(path, points, dict(axes))
