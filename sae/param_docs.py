"""Parameter documentation read from a config dataclass: the string literal after each field
(as in sae/config.py), for the estimators' `help()` and signatures."""
from __future__ import annotations

import dataclasses
import inspect

from unsuperpose.data.config_cli import field_docs


def param_docs(config_class: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal after the field, over the config's
    dataclass bases too; read by `data.config_cli.field_docs`, which the command lines'
    options use as well), in field order; a field without one is left out."""
    docs = field_docs(config_class)
    return {f.name: docs[f.name] for f in dataclasses.fields(config_class) if f.name in docs}


def field_default(field: dataclasses.Field):
    """A field's default value, or inspect.Parameter.empty for a required field."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty


def parameters_section(config_class: type) -> str:
    """The "Parameters" part of an estimator's docstring, from its config's field docs."""
    docs = param_docs(config_class)
    lines = [f"Parameters (keyword only; {config_class.__name__}):"]
    for field in dataclasses.fields(config_class):
        default = field_default(field)
        shown = "required" if default is inspect.Parameter.empty else f"default {default!r}"
        lines.append(f"    {field.name}: {field.type}, {shown}")
        for line in docs.get(field.name, "").splitlines():
            lines.append(f"        {line}")
    return "\n".join(lines)
