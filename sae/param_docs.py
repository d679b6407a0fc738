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


def summary(doc: str, width: int = 100) -> str:
    """A field docstring on one line: its first sentence, or, where that is longer than
    `width`, up to its first ';' outside parentheses (cut at a word with '...' if still longer)."""
    text = " ".join(doc.split())
    for stop in (". ", "; "):
        cut = _outside_parentheses(text, stop)
        if cut is not None and (stop == ". " or len(text) > width):
            text = text[:cut] if stop == "; " else text[:cut + 1]
        if len(text) <= width:
            return text
    return text[:width - 3].rsplit(" ", 1)[0] + "..."


def _outside_parentheses(text: str, stop: str) -> int | None:
    """The index of the first `stop` in `text` at parenthesis depth 0, or None."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and text.startswith(stop, i):
            return i
    return None


def params_listing(name: str, config_class: type, fixed: dict, set_by_stage: tuple[str, ...],
                   full: bool = False) -> str:
    """What `unsuperpose sae --list-params` prints for one method: a header naming its class,
    then per parameter its name, default and one-line doc (`full`: the whole doc, wrapped);
    `fixed` parameters (the variant's, such as mod_nn's nonnegative) and those the stage sets
    from the run (`set_by_stage`) are marked as such."""
    import textwrap

    docs = param_docs(config_class)
    fields = dataclasses.fields(config_class)
    lines = [f"{name} ({config_class.__name__.removesuffix('Config')}; "
             f"--param {name}.NAME=VALUE):"]
    width = max(len(f.name) for f in fields)
    for field in fields:
        if field.name in fixed:
            shown = f"{fixed[field.name]!r} (fixed: it defines {name})"
        elif field.name in set_by_stage:
            shown = "set by the stage"
        else:
            default = field_default(field)
            shown = "required" if default is inspect.Parameter.empty else repr(default)
        doc = docs.get(field.name, "")
        if full and doc:
            lines.append(f"  {field.name:{width}s}  {shown}")
            lines += textwrap.wrap(" ".join(doc.split()), 96, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)
        else:
            lines.append(f"  {field.name:{width}s}  {shown}: {summary(doc)}" if doc
                         else f"  {field.name:{width}s}  {shown}")
    return "\n".join(lines)
