"""Configuration: which backend, which app, component overrides and backend options.

Precedence, highest first: explicit arguments (CLI flags, ``connect(...)``) > ``FLOWCRAFT_*`` environment >
``flowcraft.toml`` (in the working directory, or the file named by ``FLOWCRAFT_CONFIG``) >
``[tool.flowcraft]`` in ``pyproject.toml`` (working directory) > defaults (backend ``sqlite``).

Environment: ``FLOWCRAFT_<KEY>`` sets a top-level key (``FLOWCRAFT_BACKEND``, ``FLOWCRAFT_APP``; the tables
``components`` and ``options`` take a JSON object), ``FLOWCRAFT_<KIND>`` overrides one component
(``FLOWCRAFT_QUEUE=sqs``), ``FLOWCRAFT_OPT_<KEY>`` sets one option, and ``FLOWCRAFT_<NAME>_URL`` is short for
option ``<name>_url`` (``FLOWCRAFT_REDIS_URL`` -> ``options.redis_url``).

Leases: ``lease_seconds`` (default 30; ``FLOWCRAFT_LEASE_SECONDS``, ``flowcraft worker --lease-seconds``) is
the one setting for how long a worker owns a job without a sign of life. The engine's job lease is
``lease_seconds``, the worker renews it and the queue visibility every ``lease_seconds / 3``, and a job of a
killed worker is delivered again after about ``lease_seconds``. The queue option ``visibility_timeout``
follows it: left unset it is set to ``lease_seconds``; set alone (the older spelling) it *is* the lease;
set shorter than ``lease_seconds`` it is refused, because the queue would deliver a job again while its
node still runs. A longer one is allowed (a killed worker's job then comes back after it).

Event loop: ``event_loop = "auto" | "asyncio" | "uvloop"`` (``FLOWCRAFT_EVENT_LOOP``) is the loop a worker
process runs on (``flowcraft worker``, ``run_event_loop``). ``auto`` (the default) takes uvloop when it is
installed (``pip install "flowcraft-core[uvloop]"``) and asyncio's own loop otherwise; ``uvloop`` without
uvloop installed is a ``ConfigError``.

Plugins: ``[plugins] disable = ["flowcraft-sqs", "toy"]`` (``[tool.flowcraft.plugins]`` in pyproject.toml) and
``FLOWCRAFT_PLUGINS_DISABLE=flowcraft-sqs,toy`` name plugins, by distribution or entry-point name, that are
not loaded at all; every layer adds to the list (``Config.plugins_disable``: name -> where it was named).

Options are checked against the schemas of the backend's components when it is built (``flowcraft.options``):
values from the environment and the command line arrive as strings and are coerced to each option's type,
an unknown key is refused with the closest known one. ``Config.resolved_options()`` is what ``flowcraft
config`` shows: every declared option with the value it takes (the sqlite path made absolute).

Options whose name looks secret (password, secret, token, key, credential) and passwords inside URLs or
connection strings are masked by ``Config.redacted()`` and by ``repr``; nothing here logs values.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flowcraft.errors import ConfigError
from flowcraft.options import READ_ONLY_OPTION, VISIBILITY_OPTION, describe_options, resolve_options, validate_options
from flowcraft.plugins import DISABLE_ENV, DISABLE_ENV_OLD, KINDS, disabled_by_env, registry
from flowcraft.spi import Backend

if TYPE_CHECKING:
    from flowcraft.app import App
    from flowcraft.client import Client

DEFAULT_BACKEND = "sqlite"
CONFIG_FILE = "flowcraft.toml"
CONFIG_ENV = "FLOWCRAFT_CONFIG"
ENV_PREFIX = "FLOWCRAFT_"
OPTION_ENV_PREFIX = "FLOWCRAFT_OPT_"
KEYS = ("backend", "app", "lease_seconds", "event_loop", "components", "options", "plugins", "retention")
#: The event loops ``event_loop`` may name: ``auto`` is uvloop when installed, else asyncio's.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
#: The run statuses ``retention`` may name (only finished runs are ever purged).
RETENTION_STATUSES = ("completed", "failed", "cancelled")
PLUGIN_KEYS = ("disable",)
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_EVENT_LOOP = "auto"
MASK = "***"

_SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential")
# Azure-style connection strings carry the secret as a field: AccountKey=...;
_SECRET_FIELD = re.compile(r"(?i)\b(password|pwd|accountkey|sharedaccesskey|sharedaccesssignature)=([^;]*)")
# the password runs to the authority's LAST '@' (an unencoded '@' may be part of it): 'redis://:a@b@h' -> 'h'
_URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^:/@\s]*):[^/?#\s]*@")
# Variables of the project's own tooling, not configuration (FLOWCRAFT_TEST_REDIS_URL is a test server).
_NOT_CONFIG_ENV = ("FLOWCRAFT_TEST_", DISABLE_ENV, DISABLE_ENV_OLD, CONFIG_ENV)


@dataclass(slots=True)
class Config:
    """The resolved configuration; ``sources`` says where each value came from (``"options.url"`` -> ...)."""

    backend: str = DEFAULT_BACKEND
    app: str | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: the worker's event loop (``EVENT_LOOPS``)
    event_loop: str = DEFAULT_EVENT_LOOP
    components: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    #: plugins not to load, by distribution or entry-point name -> where that was said
    plugins_disable: dict[str, str] = field(default_factory=dict)
    #: retention: finished runs older than this many seconds (per status) are purged by ``flowcraft reconcile``
    retention: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")

    def redacted(self) -> dict[str, Any]:
        """The configuration as plain data with secrets masked: safe to print."""
        return {
            "backend": self.backend,
            "app": self.app,
            "lease_seconds": self.lease_seconds,
            "event_loop": self.event_loop,
            "components": dict(self.components),
            "options": {key: mask_option(key, value) for key, value in self.options.items()},
            "plugins": {"disable": sorted(self.plugins_disable)},
            "retention": dict(self.retention),
        }

    def entries(self, options: Mapping[str, Any] | None = None) -> list[tuple[str, Any, str]]:
        """``(key, masked value, source)`` for every set value, in display order; ``options``: the options to
        show instead of those set (``resolved_options()``, defaults included)."""
        rows: list[tuple[str, Any, str]] = [("backend", self.backend, self.source("backend"))]
        if self.app is not None:
            rows.append(("app", self.app, self.source("app")))
        rows.append(("lease_seconds", self.lease_seconds, self.source("lease_seconds")))
        rows.append(("event_loop", self.event_loop, self.source("event_loop")))
        rows += [(f"components.{kind}", name, self.source(f"components.{kind}"))
                 for kind, name in sorted(self.components.items())]
        shown = self.options if options is None else options
        rows += [(f"options.{key}", mask_option(key, value), self._option_source(key))
                 for key, value in sorted(shown.items())]
        rows += [("plugins.disable", name, where) for name, where in sorted(self.plugins_disable.items())]
        rows += [(f"retention.{status}", seconds, self.source("retention")) for status, seconds in
                 sorted(self.retention.items())]
        return rows

    def _option_source(self, key: str) -> str:
        if key == VISIBILITY_OPTION and f"options.{key}" not in self.sources:
            return "lease_seconds"
        return self.source(f"options.{key}")

    def backend_options(self) -> dict[str, Any]:
        """The options the backend is built with: those set, and the queue's visibility from the lease."""
        return {VISIBILITY_OPTION: self.lease_seconds, **self.options}

    def resolved_options(self) -> dict[str, Any]:
        """Every option the backend's components declare, with the value each takes (defaults included, the
        schemas' normalisation applied, e.g. the sqlite path made absolute), and the keys a component without
        a schema gets unchecked. Raises ``ConfigError`` for an unknown key or a bad value, as building does."""
        components = registry(self.plugins_disable).classes(self.backend, self.components)
        return resolve_options(components, validate_options(self.backend, components, self.backend_options()))

    def build_backend(self, *, read_only: bool = False) -> Backend:
        """The configured backend. ``read_only``: components that declare a ``read_only`` option (sqlite)
        open existing storage for reading only, and fail rather than create it (``flowcraft status``/``runs``)."""
        reg = registry(self.plugins_disable)
        options = self.backend_options()
        if read_only:
            declared = {info.name for info in describe_options(reg.classes(self.backend, self.components))}
            if READ_ONLY_OPTION in declared:
                options[READ_ONLY_OPTION] = True
        return reg.build(self.backend, options, self.components)

    def __repr__(self) -> str:
        return f"Config({self.redacted()!r})"


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def mask_value(value: Any) -> Any:
    """Mask the password of a URL (``redis://:pw@host``) and secret fields of a connection string."""
    return redact_text(value) if isinstance(value, str) else value


def redact_text(text: str) -> str:
    """Mask URL passwords and connection-string secrets anywhere in a message (e.g. a driver's error)."""
    text = _SECRET_FIELD.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", text)


def mask_option(key: str, value: Any) -> Any:
    if value is not None and is_secret_key(key):
        return MASK
    return mask_value(value)


# ---------------------------------------------------------------------------------------------- loading
def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    source: str = "arguments",
) -> Config:
    """Resolve the configuration. ``overrides`` are the highest layer (CLI flags, ``connect`` arguments),
    with the same keys as the file, reported as coming from ``source``; ``path`` names the config file
    (else ``FLOWCRAFT_CONFIG``, else ``./flowcraft.toml`` when present)."""
    env = os.environ if env is None else env
    base = Path.cwd() if cwd is None else Path(cwd)
    config = Config()
    pyproject = base / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject).get("tool", {}).get("flowcraft")
        if table is not None:
            _merge(config, _validate(table, f"{pyproject} [tool.flowcraft]"), f"{pyproject} [tool.flowcraft]")
            config.files.append(pyproject)
    explicit = path if path is not None else env.get(CONFIG_ENV) or None
    config_file = Path(explicit) if explicit is not None else base / CONFIG_FILE
    if explicit is not None and not config_file.is_absolute():
        config_file = base / config_file
    if config_file.is_file():
        _merge(config, _validate(_read_toml(config_file), str(config_file)), str(config_file))
        config.files.append(config_file)
    elif explicit is not None:
        how = "--config" if path is not None else CONFIG_ENV
        raise ConfigError(f"config file {config_file} does not exist (named by {how})",
                          hint="fix the path or create the file")
    layer, variables = _from_env(env)
    _merge(config, layer, "env")
    config.sources.update({key: f"env {name}" for key, name in variables.items()})
    config.plugins_disable.update(disabled_by_env(env))
    if overrides:
        _merge(config, _validate(overrides, source), source)
    _derive_visibility(config)
    return config


def _derive_visibility(config: Config) -> None:
    """Make the queue's visibility timeout and the lease one setting (the rule is in the module docstring)."""
    raw = config.options.get(VISIBILITY_OPTION)
    if raw is None:
        return  # build_backend() gives the queue lease_seconds
    where = config.source(f"options.{VISIBILITY_OPTION}")
    visibility = _positive_seconds(raw, f"{where}: options.{VISIBILITY_OPTION}")
    if "lease_seconds" not in config.sources:
        config.lease_seconds = visibility
        config.sources["lease_seconds"] = f"options.{VISIBILITY_OPTION}"
    elif visibility < config.lease_seconds:
        raise ConfigError(
            f"options.{VISIBILITY_OPTION} ({visibility:g}s, {where}) is shorter than lease_seconds "
            f"({config.lease_seconds:g}s, {config.source('lease_seconds')}): the queue would deliver a job again "
            "while its node still runs",
            hint=f"drop {VISIBILITY_OPTION} (it follows lease_seconds) or set lease_seconds to {visibility:g}")


def _positive_seconds(value: Any, where: str) -> float:
    """A positive, finite number of seconds (files give numbers, the environment and -o give strings)."""
    try:
        seconds = float(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None
    except ValueError:
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{where} must be a positive number of seconds, got {value!r}", hint="e.g. 30")
    return seconds


def check_event_loop(value: Any, where: str = "event_loop") -> str:
    """One of ``EVENT_LOOPS`` (any case, surrounding blanks ignored), else a ConfigError naming ``where``."""
    choice = value.strip().lower() if isinstance(value, str) else None
    if choice not in EVENT_LOOPS:
        raise ConfigError(f"{where} must be one of {', '.join(EVENT_LOOPS)}, got {value!r}",
                          hint='"auto" takes uvloop when it is installed')
    return choice


def event_loop_factory(choice: str = DEFAULT_EVENT_LOOP) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the event loop ``choice`` names: uvloop's (``uvloop``, or ``auto`` when uvloop imports) or
    asyncio's. ``uvloop`` without uvloop installed is a ConfigError."""
    choice = check_event_loop(choice)
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("event_loop is \"uvloop\" but uvloop is not installed",
                                  hint='pip install "flowcraft-core[uvloop]", or set event_loop = "auto"') from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


_T = TypeVar("_T")


def run_event_loop(coroutine: Coroutine[Any, Any, _T], choice: str = DEFAULT_EVENT_LOOP) -> _T:
    """``asyncio.run(coroutine)`` on the event loop ``choice`` names (see ``event_loop_factory``)."""
    try:
        factory = event_loop_factory(choice)
    except ConfigError:
        coroutine.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", hint="fix the syntax at that line") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _validate(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check the shape of one layer; every message names the file and the key to fix."""
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}",
                          hint=f"known keys: {', '.join(KEYS)}; backend options go under [options]")
    if data.get("lease_seconds") is not None:
        _positive_seconds(data["lease_seconds"], f"{where}: lease_seconds")
    if data.get("event_loop") is not None:
        check_event_loop(data["event_loop"], f"{where}: event_loop")
    if data.get("retention") is not None:
        parse_retention(data["retention"], f"{where}: retention")
    for key in ("backend", "app"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    app = data.get("app")
    if isinstance(app, str) and ":" not in app:
        raise ConfigError(f"{where}: app {app!r} must be written 'package.module:attribute'")
    components = data.get("components") or {}
    if not isinstance(components, Mapping):
        raise ConfigError(f"{where}: 'components' must be a table of kind = \"name\"")
    for kind, name in components.items():
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown component kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: components.{kind} must be a component name string, got {name!r}")
    plugins = data.get("plugins") or {}
    if not isinstance(plugins, Mapping):
        raise ConfigError(f"{where}: 'plugins' must be a table", hint='e.g. [plugins] disable = ["flowcraft-sqs"]')
    unknown = sorted(set(plugins) - set(PLUGIN_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key plugins.{unknown[0]}", hint=f"known keys: {', '.join(PLUGIN_KEYS)}")
    disable = plugins.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(name, str) and name.strip() for name in disable):
        raise ConfigError(f"{where}: plugins.disable must be a list of plugin or distribution names, got {disable!r}",
                          hint='e.g. [plugins] disable = ["flowcraft-sqs"]')
    options = data.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}: 'options' must be a table of backend settings")
    for key, value in options.items():
        if isinstance(value, Mapping):
            raise ConfigError(f"{where}: options.{key} is a table, but options are flat",
                              hint=f"write e.g. options.{key}_url = \"...\" instead of a nested table")
    return {key: value for key, value in data.items() if value is not None}


def _from_env(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The environment layer and, per key set (``"options.redis_url"``), the variable that set it.
    A specific variable (``FLOWCRAFT_QUEUE``) wins over the same key in a JSON table (``FLOWCRAFT_COMPONENTS``)."""
    layer: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {"components": {}, "options": {}}
    specific: dict[str, dict[str, Any]] = {"components": {}, "options": {}}
    variables: dict[str, str] = {}
    for name in sorted(env):
        value = env[name]
        if not name.startswith(ENV_PREFIX) or name.startswith(_NOT_CONFIG_ENV) or value == "":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        if name.startswith(OPTION_ENV_PREFIX):
            table, key = "options", name[len(OPTION_ENV_PREFIX):].lower()
        elif rest in ("backend", "app", "lease_seconds", "event_loop", "retention"):
            layer[rest] = value
            variables[rest] = name
            continue
        elif rest in tables:
            tables[rest] = _json_table(name, value)
            variables.update({f"{rest}.{key}": name for key in tables[rest] if key not in specific[rest]})
            continue
        elif rest in KINDS:
            table, key = "components", rest
        elif rest.endswith("_url"):
            table, key = "options", rest
        else:
            continue
        specific[table][key] = value
        variables[f"{table}.{key}"] = name
    for table in tables:
        merged = {**tables[table], **specific[table]}
        if merged:
            layer[table] = merged
    return _validate(layer, "environment (FLOWCRAFT_*)"), variables


def _json_table(name: str, value: str) -> dict[str, Any]:
    try:
        table = json.loads(value)
    except json.JSONDecodeError:
        table = None
    if not isinstance(table, dict):
        raise ConfigError(f"{name} must be a JSON object", hint=f"e.g. {name}='{{\"queue\": \"sqs\"}}'")
    return table


def _merge(config: Config, layer: Mapping[str, Any], source: str) -> None:
    for key in ("backend", "app"):
        if key in layer:
            setattr(config, key, layer[key])
            config.sources[key] = source
    if "lease_seconds" in layer:
        config.lease_seconds = _positive_seconds(layer["lease_seconds"], f"{source}: lease_seconds")
        config.sources["lease_seconds"] = source
    if "event_loop" in layer:
        config.event_loop = check_event_loop(layer["event_loop"], f"{source}: event_loop")
        config.sources["event_loop"] = source
    for kind, name in (layer.get("components") or {}).items():
        config.components[kind] = name
        config.sources[f"components.{kind}"] = source
    for key, value in (layer.get("options") or {}).items():
        config.options[key] = value
        config.sources[f"options.{key}"] = source
    for name in (layer.get("plugins") or {}).get("disable", []):
        config.plugins_disable[name.strip()] = _disable_source(source)  # layers add up; the highest is reported
    if "retention" in layer:
        config.retention = parse_retention(layer["retention"], f"{source}: retention")
        config.sources["retention"] = source


def parse_retention(value: Any, where: str = "retention") -> dict[str, float]:
    """``retention = "7d"`` (every finished status) or a table ``{completed = "7d", failed = "30d"}`` -> seconds
    per status. A status left out of a table is kept for ever."""
    from flowcraft.errors import BlueprintError
    from flowcraft.model import parse_duration

    table = {status: value for status in RETENTION_STATUSES} if not isinstance(value, Mapping) else value
    retention: dict[str, float] = {}
    for status, age in table.items():
        if status not in RETENTION_STATUSES:
            raise ConfigError(f"{where}: unknown status {status!r}",
                              hint=f"use {', '.join(RETENTION_STATUSES)}: only finished runs are purged")
        try:
            retention[status] = parse_duration(age, f"{where}.{status}" if isinstance(value, Mapping) else where)
        except BlueprintError as exc:
            raise ConfigError(str(exc)) from None
    return retention


def _disable_source(source: str) -> str:
    """Where a ``[plugins] disable`` list was read, as "disabled (by ...)" messages name it."""
    if source.endswith(" [tool.flowcraft]"):
        return f"config {source.removesuffix(' [tool.flowcraft]')} [tool.flowcraft.plugins] disable"
    if os.sep in source:  # a config file's path
        return f"config {source} [plugins] disable"
    return f"{source}: plugins.disable"


# ---------------------------------------------------------------------------------------------- connect
def connect(
    backend: str | None = None,
    *,
    app: App | str | None = None,
    components: Mapping[str, str] | None = None,
    **options: Any,
) -> Client:
    """A client on the configured backend; arguments override the configuration::

        client = flowcraft.connect()                                  # flowcraft.toml / env / sqlite
        client = flowcraft.connect("rq", redis_url="redis://localhost", app="myproj.workflows:app")
    """
    from flowcraft.app import App, load_app
    from flowcraft.client import Client

    overrides: dict[str, Any] = {"backend": backend, "components": components, "options": options}
    config = load_config({key: value for key, value in overrides.items() if value})
    if app is None and config.app is not None:
        app = config.app
    loaded = load_app(app) if isinstance(app, str) else app
    if loaded is not None and not isinstance(loaded, App):
        raise ConfigError(f"app must be a flowcraft.App or a 'module:attribute' string, got {type(app).__name__}")
    return Client(config.build_backend(), loaded)
