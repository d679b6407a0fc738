"""Click options drawn from a stage's config dataclass, so that a config field is an option
with nothing else to write.

One option per field: the name from the field name (`n_features` -> `--n-features`), the type
from its annotation (int, float, str; bool -> a `--x/--no-x` flag; `tuple[float, ...]` and
`tuple[str, ...]` -> comma-separated lists; `X | None` -> X or the word `none`), the help from
the string literal under the field (read from the source with `ast`), the choices from the
field's `metadata={"choices": ...}`, and the dataclass default shown in the help. Every option
defaults to None, so that a `--config FILE` value is only overridden on purpose.

    OPTIONS = ConfigOptions(EvaluateConfig, names={"instances": "--instance"})

    @click.command()
    @OPTIONS
    def main(**options):
        values = {**read_config_file(path), **OPTIONS.given(options)}
        config = OPTIONS.build(values, source=str(path))  # a ConfigError names its option
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing

import click

from unsuperpose.data.cli import FloatList, NameList
from unsuperpose.data.configs import ConfigError

# `X | None` options take this word for None: a config file's value can be unset on purpose
NONE_WORD = "none"


class _ExplicitNone:
    """What an optional option holds when the command line said `none` (None itself means
    the option was not given)."""

    def __repr__(self) -> str:
        return NONE_WORD


EXPLICIT_NONE = _ExplicitNone()


class OrNone(click.ParamType):
    """The inner type, or the word `none` for a field whose None means something."""

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = f"{inner.name}|{NONE_WORD}"

    def convert(self, value, param, ctx):
        if value is None or value is EXPLICIT_NONE:
            return value
        if isinstance(value, str) and value.strip().lower() == NONE_WORD:
            return EXPLICIT_NONE
        return self.inner.convert(value, param, ctx)


@functools.lru_cache(maxsize=None)
def field_docs(config_class: type) -> dict[str, str]:
    """{field: the string literal written under it}, over the dataclass and its bases (a
    subclass's text wins), whitespace as written less the common indent."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source on disk (a frozen build): no help text
            continue
        body = ast.parse(source).body[0].body
        for stmt, after in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_help(config_class: type, name: str) -> str:
    """A field's docstring as one line of help text."""
    return " ".join(field_docs(config_class).get(name, "").split())


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _shown(value) -> str:
    if value is None:
        return NONE_WORD
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value) or "(empty)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _is_optional(hint) -> tuple[bool, object]:
    """(whether `hint` is `X | None`, X)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return True, args[0]
    return False, hint


def _param_type(config_class: type, field: str, hint, choices) -> click.ParamType:
    optional, hint = _is_optional(hint)
    if hint is int:
        kind = click.INT
    elif hint is float:
        kind = click.FLOAT
    elif hint is str:
        kind = click.Choice(list(choices)) if choices else click.STRING
    elif typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        item = typing.get_args(hint)[0]
        if item is float:
            kind = FloatList()
        elif item is str:
            kind = NameList()
        else:
            raise TypeError(f"{config_class.__name__}.{field}: no option type for a tuple of {item}")
    else:
        raise TypeError(f"{config_class.__name__}.{field}: no option type for {hint!r}; give it "
                        f"one in data/config_cli.py, or skip the field and write its option")
    return OrNone(kind) if optional else kind


class ConfigOptions:
    """The click options of a config dataclass's fields; used as a command decorator.

    skip: fields that get no generated option (the command writes its own, or none);
    names: {field: option} for an option not named after its field (`--instance`);
    types: {field: click type} where the annotation's type is not the one to parse with (a
    bool field given one takes a value, `--x true`, instead of being a `--x/--no-x` flag);
    off: {bool field: the off flag} where it is not `--no-<field>` (`--keep-zero-rows`);
    hints: {skipped field: the option} that a ConfigError on that field names.
    """

    def __init__(self, config_class: type, *, skip=(), names=None, types=None, off=None,
                 hints=None):
        self.config_class = config_class
        own = vars(config_class).get("__annotations__", {})
        fields = sorted(dataclasses.fields(config_class), key=lambda f: f.name not in own)
        self.fields = [f for f in fields if f.name not in set(skip)]
        unknown = (set(skip) | set(names or {}) | set(types or {}) | set(off or {})
                   ) - {f.name for f in fields}
        if unknown:
            raise TypeError(f"{config_class.__name__} has no field {', '.join(sorted(unknown))}")
        self.names = {f.name: (names or {}).get(f.name, option_name(f.name)) for f in self.fields}
        self.hints = {**(hints or {}), **self.names}
        self._types, self._off = dict(types or {}), dict(off or {})

    def help(self, field: dataclasses.Field, default_text: str) -> str:
        text = field_help(self.config_class, field.name)
        choices = field.metadata.get("choices")
        if choices and typing.get_origin(self._hint(field)) is tuple:
            text += f" From: {', '.join(choices)}."
        return f"{text}  [default: {default_text}]"

    def _hint(self, field: dataclasses.Field):
        return typing.get_type_hints(self.config_class)[field.name]

    def option(self, field: dataclasses.Field):
        """The click.option decorator of one field."""
        flag, default = self.names[field.name], _default(field)
        hint = self._hint(field)
        if hint is bool and field.name not in self._types:
            off = self._off.get(field.name, "--no-" + flag[2:])
            shown = (flag if default else off)[2:]
            return click.option(f"{flag}/{off}", field.name, default=None, show_default=False,
                                help=self.help(field, shown))
        choices = field.metadata.get("choices")
        kind = self._types.get(field.name) or _param_type(self.config_class, field.name, hint, choices)
        shown = "all" if choices and default == tuple(choices) else _shown(default)
        return click.option(flag, field.name, type=kind, default=None, show_default=False,
                            help=self.help(field, shown))

    def __call__(self, func):
        for field in reversed(self.fields):
            func = self.option(field)(func)
        return func

    def given(self, options: dict) -> dict:
        """Take the fields' values out of a command's keyword arguments: {field: value} of
        the options given (`none` given as None); the other keywords stay in `options`."""
        values = {f.name: options.pop(f.name) for f in self.fields}
        return {k: None if v is EXPLICIT_NONE else v for k, v in values.items() if v is not None}

    def bad_parameter(self, err: ConfigError) -> click.BadParameter:
        """The usage error (exit 2, one line) naming the option of err's field; a field no
        option sets (an unknown key of a config file) is named under --config."""
        if err.field in self.hints:
            return click.BadParameter(err.message, param_hint=self.hints[err.field])
        return click.BadParameter(str(err), param_hint="--config")

    def build(self, values: dict, source: str = "options"):
        """The config of `values` (a config file's fields under the options given); any
        refusal is a usage error naming the option."""
        try:
            return self.config_class.from_dict(values, source=source)
        except ConfigError as err:
            raise self.bad_parameter(err) from None
        except (TypeError, ValueError) as err:  # a config file's value of the wrong kind
            raise click.BadParameter(str(err), param_hint="--config") from None
