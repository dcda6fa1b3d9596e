"""Options a component declares: a schema of typed fields with defaults and help, checked once, in core.

A component class declares its options as ``Options``, a frozen dataclass whose fields are built with
``option(default, help)``::

    @dataclass(frozen=True)
    class MyQueueOptions(QueueOptions):            # inherits visibility_timeout, declared once here
        url: str = option("http://localhost:9000", "where the server listens")
        batch: int = option(10, "messages fetched per request")

    class MyQueue(Queue):
        name = "mine"
        Options = MyQueueOptions

        @classmethod
        def from_config(cls, options, shared):
            o = parse_options(MyQueueOptions, options)
            return cls(o.url, o.batch, o.visibility_timeout)

The options of a backend are one flat mapping shared by its components. Before any component is built,
``validate_options`` checks that mapping against the union of the components' schemas: values are coerced
to the field types (the command line and the environment give strings; TOML gives typed values) and a key
no component declares is refused with a "did you mean" hint. A component that declares no ``Options``
(``None``, e.g. a third-party one written before schemas) turns the unknown-key check off for its backend:
its keys are passed through as given, unchecked. An empty string means "not set": the default applies.

Field types: ``str``, ``int``, ``float``, ``bool``, ``pathlib.Path``, each optionally ``| None``. A field
made with ``option(..., secret=True)`` is masked wherever it is shown. A schema may check ranges or
normalise values in ``__post_init__`` (raise ``ConfigError``).
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flowcraft.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from flowcraft.spi import Component

T = TypeVar("T")

#: The option the configuration always sets for the queue (from ``lease_seconds``).
VISIBILITY_OPTION = "visibility_timeout"
#: The option the read-only commands (``flowcraft status``/``runs``) set for components that declare it.
READ_ONLY_OPTION = "read_only"

_HELP = "flowcraft.help"
_SECRET = "flowcraft.secret"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_TYPE_NAMES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def option(default: Any, help: str, *, secret: bool = False) -> Any:
    """A field of an ``Options`` dataclass: its default, one line of help, and whether to mask its value."""
    return field(default=default, metadata={_HELP: help, _SECRET: secret})


@dataclass(frozen=True)
class QueueOptions:
    """What every queue takes: the configuration sets it from ``lease_seconds`` (see ``flowcraft.config``)."""

    visibility_timeout: float = option(
        30.0, "seconds a received job stays invisible before it is delivered again; follows lease_seconds")

    def __post_init__(self) -> None:
        if self.visibility_timeout <= 0:
            raise ConfigError(f"option {VISIBILITY_OPTION}: must be a positive number of seconds, "
                              f"got {self.visibility_timeout!r}", hint="e.g. 30, or leave it to lease_seconds")


@dataclass(frozen=True)
class NoOptions:
    """The schema of a component that takes no options (so keys it is given are unknown, not passed on)."""


@dataclass(frozen=True, slots=True)
class OptionInfo:
    """One declared option as ``flowcraft backends --options`` shows it."""

    name: str
    type: str
    default: Any
    help: str
    secret: bool
    #: the kinds of the components that declare it, e.g. ``("queue", "context")``
    components: tuple[str, ...]


def schema_of(component: type[Component]) -> type[Any] | None:
    """The component's ``Options`` dataclass, or None when it declares none (its keys pass unchecked)."""
    schema = getattr(component, "Options", None)
    if schema is None:
        return None
    if not (isinstance(schema, type) and is_dataclass(schema)):
        raise PluginError(f"{component.__qualname__}.Options must be a dataclass, got {schema!r}",
                          hint="declare the options as a frozen dataclass with option(...) fields")
    return schema


def parse_options(schema: type[T], options: Mapping[str, Any]) -> T:
    """An instance of ``schema`` from the keys of ``options`` it declares (other keys belong to other
    components), each coerced to its field's type; unset keys take their defaults."""
    hints = _type_hints(schema)
    values = {f.name: coerce(f.name, options[f.name], hints[f.name], secret=bool(f.metadata.get(_SECRET)))
              for f in _fields(schema) if f.init and not _unset(options.get(f.name))}
    return schema(**values)


def validate_options(backend: str, components: Mapping[str, type[Component]],
                     options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every declared key coerced to its type, checked by each declaring schema; a key no
    component declares is refused, unless a component declares no schema (then it passes as given)."""
    declared: dict[str, tuple[Any, bool]] = {}  # name -> (type, secret), the first declaration's
    schemas: list[type[Any]] = []
    checks_keys = True
    for component in components.values():
        schema = schema_of(component)
        if schema is None:
            checks_keys = False
            continue
        schemas.append(schema)
        for name, declaration in _declared(schema).items():
            declared.setdefault(name, declaration)
    declared.setdefault(VISIBILITY_OPTION, (float, False))  # the configuration always sets it, for any queue
    validated: dict[str, Any] = {}
    for key, value in options.items():
        if key in declared:
            hint, secret = declared[key]
            validated[key] = None if _unset(value) else coerce(key, value, hint, secret=secret, backend=backend)
        elif checks_keys:
            raise _unknown(key, backend, sorted(declared))
        else:
            validated[key] = value
    for schema in schemas:
        parse_options(schema, validated)  # each schema's own checks (ranges) run before anything is built
    return {key: value for key, value in validated.items() if value is not None}


def resolve_options(components: Mapping[str, type[Component]], options: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared option with the value a component takes (the default when unset, after the schema's
    normalisation, e.g. a path made absolute), plus the keys passed through unchecked; ``options`` validated."""
    resolved: dict[str, Any] = {}
    for component in components.values():
        schema = schema_of(component)
        if schema is not None:
            instance = parse_options(schema, options)
            for f in _fields(type(instance)):
                resolved.setdefault(f.name, getattr(instance, f.name))
    return {**resolved, **{key: value for key, value in options.items() if key not in resolved}}


def describe_options(components: Mapping[str, type[Component]]) -> list[OptionInfo]:
    """The options the components declare, each once, in declaration order."""
    found: dict[str, OptionInfo] = {}
    for kind, component in components.items():
        schema = schema_of(component)
        if schema is None:
            continue
        hints = _type_hints(schema)
        for f in _fields(schema):
            owner = kind
            known = found.get(f.name)
            if known is not None:
                found[f.name] = OptionInfo(known.name, known.type, known.default, known.help, known.secret,
                                           (*known.components, owner))
                continue
            found[f.name] = OptionInfo(f.name, type_name(hints[f.name]), _default(f), f.metadata.get(_HELP, ""),
                                       bool(f.metadata.get(_SECRET)), (owner,))
    return list(found.values())


def secret_names(components: Mapping[str, type[Component]]) -> frozenset[str]:
    """Names of the options declared ``secret=True`` by any of the components."""
    return frozenset(info.name for info in describe_options(components) if info.secret)


def coerce(name: str, value: Any, hint: Any, *, secret: bool = False, backend: str = "BACKEND") -> Any:
    """``value`` as the type ``hint`` (``int``, ``float``, ``bool``, ``str``, ``Path``, optionally ``| None``);
    the error message shows the value unless the option is secret or its name looks secret."""
    base, optional = _base_type(hint)
    if value is None and optional:
        return None
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif base is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is not None and math.isfinite(number):
            return number
    elif base is Path:
        if isinstance(value, str | Path):
            return Path(value)
    elif base is str:
        if isinstance(value, str):
            return value
    else:
        raise PluginError(f"option {name}: its declared type {hint!r} is not supported",
                          hint="use str, int, float, bool or pathlib.Path, optionally | None")
    shown = "***" if secret or _looks_secret(name) else repr(value)
    expected = {bool: "true or false", int: "a whole number", float: "a number", Path: "a path",
                str: "a string"}[base]
    raise ConfigError(f"option {name}: expected {expected}, got {shown}",
                      hint=f"`flowcraft backends --options {backend}` lists each option with its type")


def type_name(hint: Any) -> str:
    base, optional = _base_type(hint)
    name = _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
    return f"{name} (optional)" if optional else name


# ---------------------------------------------------------------------------------------------- helpers
def _unset(value: Any) -> bool:
    return value is None or value == ""


def _fields(schema: type[Any]) -> tuple[Field[Any], ...]:
    return fields(schema)


def _declared(schema: type[Any]) -> dict[str, tuple[Any, bool]]:
    hints = _type_hints(schema)
    return {f.name: (hints[f.name], bool(f.metadata.get(_SECRET))) for f in _fields(schema) if f.init}


def _type_hints(schema: type[Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(schema)
    except Exception as exc:  # an annotation naming something the schema's module does not import at run time
        raise PluginError(f"the option types of {schema.__qualname__} cannot be resolved: {exc}",
                          hint="import the annotations' types at run time in the schema's module") from None


def _base_type(hint: Any) -> tuple[Any, bool]:
    """``(int, True)`` for ``int | None``; ``(int, False)`` for ``int``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        if len(members) == 1:
            return members[0], True
    return hint, False


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _looks_secret(name: str) -> bool:
    from flowcraft.config import is_secret_key  # config imports the plugin machinery, which imports this

    return is_secret_key(name)


def _unknown(key: str, backend: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown option {key!r} for backend {backend!r}{suggestion}",
                       hint=f"`flowcraft backends --options {backend}` lists them: {', '.join(known)}")
