"""Plugin discovery and selection by name (hatch style: hooks register named classes).

Built-ins register through the same hooks as third-party distributions. Entry points are loaded once, on
first use; a component given as ``"module:Class"`` is imported only when it is selected.

A plugin that fails is left out and reported, one line naming its distribution and version, and everything
else keeps working: an entry point that cannot be imported (*broken*), a hook that raises or returns
something that is not a registration (*raising*), a name another plugin also registers (*clashing*:
built-ins win against a third party; two third parties with the same name are both left out, since
neither is the obvious one to keep), a plugin module whose ``SPI_VERSION`` is not ``flowcraft.spi.SPI_VERSION``
(*written for another SPI*). Plugins named in ``[plugins] disable`` (config) or
``FLOWCRAFT_PLUGINS_DISABLE`` are not imported at all, and selecting what they provide says "disabled".
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pluggy

from flowcraft import hookspecs
from flowcraft.engine.kinds import InlineKind, JobKind, NodeKind
from flowcraft.errors import PluginError
from flowcraft.options import validate_options
from flowcraft.spi import SPI_VERSION, Backend, Component, ContextStore, CoordinationStore, Queue, StatusStore

log = logging.getLogger("flowcraft.plugins")

ENTRY_POINT_GROUP = "flowcraft"
DISABLE_ENV = "FLOWCRAFT_PLUGINS_DISABLE"
#: The older spelling of ``FLOWCRAFT_PLUGINS_DISABLE``, still honoured.
DISABLE_ENV_OLD = "FLOWCRAFT_DISABLE_PLUGINS"
BUILTIN = "flowcraft-builtin"
KINDS: dict[str, type[Component]] = {
    "queue": Queue,
    "context": ContextStore,
    "status": StatusStore,
    "coordination": CoordinationStore,
}
_HOOKS = {
    "queue": "flowcraft_queues",
    "context": "flowcraft_context_stores",
    "status": "flowcraft_status_stores",
    "coordination": "flowcraft_coordination_stores",
}
PRESET = "backend"  # the kind under which presets are looked up in provider() and reported
NODE_KIND = "node kind"  # the kind under which node kinds are looked up in provider() and reported
#: Install hints for the backends this project publishes.
KNOWN_DISTRIBUTIONS = {
    "redis": "flowcraft-redis", "rq": "flowcraft-rq", "sqs": "flowcraft-sqs", "dynamodb": "flowcraft-sqs",
    "azure": "flowcraft-azure", "cosmos": "flowcraft-azure", "rabbitmq": "flowcraft-rabbitmq",
    "postgres": "flowcraft-rabbitmq", "kafka": "flowcraft-kafka", "cassandra": "flowcraft-kafka",
}
_warned: set[str] = set()  # left-out lines already logged by this process (the registry may be rebuilt)


@dataclass(frozen=True, slots=True)
class Preset:
    """A backend: one named combination of components (config may override any one of them), and optionally
    the factory that builds it with its components wired together."""

    name: str
    queue: str
    context: str
    status: str
    coordination: str
    description: str = ""
    #: ``"module:function"``: ``function(options) -> Backend`` wires the preset's components itself (one shared
    #: client or database, the fast paths they take together: ``Backend.capabilities``). Used when config
    #: overrides no component; otherwise (or with none) each component is built on its own by ``from_config``
    #: and takes no fast path with the others.
    factory: str = ""

    def components(self) -> dict[str, str]:
        return {"queue": self.queue, "context": self.context, "status": self.status,
                "coordination": self.coordination}


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """Who provides a plugin: its entry-point name and the distribution (name, version) that ships it."""

    name: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.name == BUILTIN

    def provider(self) -> str:
        """``flowcraft-rq 0.1.0 (plugin rq)``, or ``flowcraft-core 0.1.0 (built-in)``."""
        return f"{self.distribution} {self.version} ({'built-in' if self.builtin else f'plugin {self.name}'})"

    def describe(self) -> str:
        return f'plugin "{self.name}" ({self.distribution} {self.version})'


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A plugin that is not used, and why: ``line()`` is what warnings and ``flowcraft backends`` print."""

    plugin: PluginInfo
    reason: str  # what went wrong, or for a disabled plugin where it was disabled
    hint: str = ""
    disabled: bool = False

    def line(self, *, with_hint: bool = True) -> str:
        if self.disabled:
            return f"{self.plugin.describe()} disabled (by {self.reason})"
        hint = f"; {self.hint}" if self.hint and with_hint else ""
        return f"{self.plugin.describe()} left out: {self.reason}{hint}"


@dataclass(slots=True)
class _Entry:
    name: str
    target: Any  # a class, or "module:Class"
    plugin: PluginInfo

    def load(self, kind: str) -> type[Component]:
        if isinstance(self.target, str):
            module_name, _, attribute = self.target.partition(":")
            try:
                self.target = getattr(importlib.import_module(module_name), attribute)
            except Exception as exc:  # any failure of a plugin's module is that plugin's, reported as such
                raise PluginError(
                    f"{kind} {self.name!r} from {self.plugin.describe()} cannot be imported from {self.target!r}: "
                    f"{type(exc).__name__}: {exc}",
                    hint=f"reinstall {self.plugin.distribution}, or select another {kind}") from None
        base = KINDS[kind]
        if not (isinstance(self.target, type) and issubclass(self.target, base)):
            raise PluginError(f"{kind} {self.name!r} from {self.plugin.describe()} is not a {base.__name__}",
                              hint=f"report it to the authors of {self.plugin.distribution}")
        return self.target


@dataclass(slots=True)
class _Contribution:
    """What one plugin's hooks registered: ``(kind, name)`` -> class or lazy target (kind PRESET: a Preset)."""

    plugin: PluginInfo
    items: dict[tuple[str, str], Any] = field(default_factory=dict)


class _PluginFault(Exception):
    """A plugin's hook raised or returned something that is not a registration (the message says which)."""


class PluginRegistry:
    """Everything the installed plugins register, by kind and name, and the plugins left out (``left_out``).

    ``disabled`` maps plugin or distribution names to where they were disabled (``"env FLOWCRAFT_..."``);
    by default ``FLOWCRAFT_PLUGINS_DISABLE`` is read.
    """

    def __init__(self, load_entry_points: bool = True, disabled: Mapping[str, str] | None = None) -> None:
        self.disabled = dict(disabled_by_env(os.environ) if disabled is None else disabled)
        self.manager = pluggy.PluginManager("flowcraft")
        self.manager.add_hookspecs(hookspecs)
        from flowcraft.backends import builtin

        self.manager.register(builtin, name=BUILTIN)
        self.plugins: dict[str, PluginInfo] = {BUILTIN: PluginInfo(BUILTIN, "flowcraft-core", _core_version())}
        self.left_out: list[LeftOut] = []
        # names a left-out plugin registered (known only when its hooks ran), for "why is X missing" messages
        self._left_out_items: dict[tuple[str, str], LeftOut] = {}
        #: disabled names that match no installed plugin (a typo, or a built-in, which cannot be disabled)
        self.unmatched_disabled: list[str] = []
        if load_entry_points:
            self._load_entry_points()
        self._components: dict[str, dict[str, _Entry]] = {}
        self._presets: dict[str, tuple[Preset, PluginInfo]] = {}
        self._node_kinds: dict[str, tuple[type[NodeKind], PluginInfo]] = {}
        self._node_kind_instances: dict[str, NodeKind] = {}
        self._collect()
        for left in self.left_out:
            if not left.disabled and left.line() not in _warned:
                _warned.add(left.line())
                log.warning("%s", left.line())

    # ------------------------------------------------------------------------------------------ loading
    def _load_entry_points(self) -> None:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        by_name: dict[str, list[PluginInfo]] = {}
        for entry_point in entry_points:
            by_name.setdefault(entry_point.name, []).append(_info_of(entry_point))
        installed = {_normalize(name) for infos in by_name.values() for info in infos
                     for name in (info.name, info.distribution)}
        self.unmatched_disabled = sorted(name for name in self.disabled if _normalize(name) not in installed)
        for entry_point in entry_points:
            info = _info_of(entry_point)
            where = self._disabled_where(info)
            if where is not None:
                self.left_out.append(LeftOut(info, where, disabled=True))
                continue
            namesakes = [other for other in by_name[entry_point.name] if other != info]
            if namesakes or entry_point.name == BUILTIN:
                others = ", ".join(other.distribution for other in namesakes) or "flowcraft-core"
                self._leave_out(info, f"its entry-point name {entry_point.name!r} is also used by {others}",
                                f"uninstall or disable one of {info.distribution}, {others}")
                continue
            try:
                module = entry_point.load()
                declared = getattr(module, "SPI_VERSION", SPI_VERSION)  # optional: the SPI it was written for
                if declared != SPI_VERSION:
                    self._leave_out(info, f"it was written for SPI version {declared!r} (flowcraft-core "
                                          f"{_core_version()} has SPI version {SPI_VERSION})",
                                    f"install a release of {info.distribution} written for SPI version "
                                    f"{SPI_VERSION}, or disable it ({_disable_how(info)})")
                    continue
                self.manager.register(module, name=entry_point.name)
            except Exception as exc:  # one broken plugin must not take the others down
                self._leave_out(info, f"importing {entry_point.value} failed: {type(exc).__name__}: {exc}",
                                f"reinstall {info.distribution} or disable it ({_disable_how(info)})")
                continue
            self.plugins[entry_point.name] = info

    def _disabled_where(self, info: PluginInfo) -> str | None:
        wanted = {_normalize(name): f"{where}: {name!r}" for name, where in self.disabled.items()}
        for name in (info.name, info.distribution):
            if _normalize(name) in wanted:
                return wanted[_normalize(name)]
        return None

    def _leave_out(self, info: PluginInfo, reason: str, hint: str,
                   contribution: _Contribution | None = None) -> None:
        left = LeftOut(info, reason, hint)
        self.left_out.append(left)
        if contribution is not None:
            for key in contribution.items:
                self._left_out_items.setdefault(key, left)
        if self.manager.has_plugin(info.name):
            self.manager.unregister(name=info.name)

    def _contribution(self, name: str, info: PluginInfo) -> _Contribution:
        contribution = _Contribution(info)
        hooks = [*_HOOKS.items(), (PRESET, "flowcraft_presets"), (NODE_KIND, "flowcraft_node_kinds")]
        for kind, hook_name in hooks:
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    returned = impl.function()
                except Exception as exc:
                    raise _PluginFault(f"hook {hook_name} raised {type(exc).__name__}: {exc}") from exc
                for item in _as_list(returned, hook_name):
                    item_name, target = _registration(kind, item, hook_name)
                    if (kind, item_name) in contribution.items:
                        raise _PluginFault(f"hook {hook_name} registers {_what(kind, item_name)} twice")
                    contribution.items[(kind, item_name)] = target
        return contribution

    def _collect(self) -> None:
        contributions: dict[str, _Contribution] = {}
        for name, info in list(self.plugins.items()):
            try:
                contributions[name] = self._contribution(name, info)
            except _PluginFault as fault:
                if info.builtin:
                    raise
                self._leave_out(info, str(fault), f"report it to the authors of {info.distribution} or disable "
                                                  f"it ({_disable_how(info)})")
                del self.plugins[name]
        builtin = contributions.pop(BUILTIN)
        # built-ins win against a third party: the third party is the one to uninstall or disable
        for name, contribution in list(contributions.items()):
            clash = next((key for key in contribution.items if key in builtin.items), None)
            if clash is not None:
                info = contribution.plugin
                self._leave_out(info, f"its {_what(*clash)} clashes with the built-in one",
                                f"uninstall {info.distribution} or disable it ({_disable_how(info)})", contribution)
                del contributions[name], self.plugins[name]
        # two third parties with one name: neither is the obvious one, so both are left out
        owners: dict[tuple[str, str], list[_Contribution]] = {}
        for contribution in contributions.values():
            for key in contribution.items:
                owners.setdefault(key, []).append(contribution)
        clashing: dict[str, tuple[tuple[str, str], list[_Contribution]]] = {}
        for key, claimants in owners.items():
            if len(claimants) > 1:
                for claimant in claimants:
                    clashing.setdefault(claimant.plugin.name, (key, claimants))
        for name, (key, claimants) in clashing.items():
            contribution = contributions.pop(name)
            others = [c.plugin for c in claimants if c is not contribution]
            distributions = ", ".join([contribution.plugin.distribution, *(o.distribution for o in others)])
            self._leave_out(contribution.plugin,
                            f"its {_what(*key)} is also registered by "
                            f"{', '.join(other.describe() for other in others)}",
                            f"uninstall or disable one of {distributions} to keep the other", contribution)
            del self.plugins[name]
        self._components = {kind: {} for kind in KINDS}
        self._presets = {}
        self._node_kinds = {}
        for contribution in [builtin, *contributions.values()]:
            for (kind, name), target in contribution.items.items():
                if kind == PRESET:
                    self._presets[name] = (cast(Preset, target), contribution.plugin)
                elif kind == NODE_KIND:
                    self._node_kinds[name] = (cast(type[NodeKind], target), contribution.plugin)
                else:
                    self._components[kind][name] = _Entry(name, target, contribution.plugin)

    # ------------------------------------------------------------------------------------------ lookup
    def presets(self) -> dict[str, Preset]:
        return {name: preset for name, (preset, _) in self._presets.items()}

    def node_kinds(self) -> dict[str, NodeKind]:
        """The registered node kinds by ``uses`` name, each built once per registry."""
        if len(self._node_kind_instances) != len(self._node_kinds):
            self._node_kind_instances = {uses: cls() for uses, (cls, _) in self._node_kinds.items()}
        return self._node_kind_instances

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def provider(self, kind: str, name: str) -> PluginInfo:
        """The plugin (and distribution) that registers a component, or a preset with kind ``"backend"``."""
        if kind == PRESET:
            return self._presets[name][1]
        if kind == NODE_KIND:
            return self._node_kinds[name][1]
        return self._components[kind][name].plugin

    def component(self, kind: str, name: str) -> type[Component]:
        entry = self._components[kind].get(name)
        if entry is None:
            self._raise_unavailable(kind, name)
            raise PluginError(f"{kind} {name!r} is not installed", hint=_install_hint(name))
        return entry.load(kind)

    def preset(self, name: str) -> Preset:
        if name not in self._presets:
            self._raise_unavailable(PRESET, name)
            known = ", ".join(sorted(self._presets)) or "none"
            raise PluginError(f'backend "{name}" is not installed (installed: {known})', hint=_install_hint(name))
        return self._presets[name][0]

    def _raise_unavailable(self, kind: str, name: str) -> None:
        """Say "disabled" or "left out" instead of "not installed" when a left-out plugin provides ``name``."""
        left = self._left_out_items.get((kind, name)) or _providing(self.left_out, name)
        if left is None:
            return
        what = _what(kind, name)
        if left.disabled:
            raise PluginError(f"{what} is disabled (by {left.reason}; it comes from {left.plugin.describe()})",
                              hint=f"remove that name from there to use it, or select another {kind}")
        raise PluginError(f"{what} is not available: {left.line(with_hint=False)}", hint=left.hint)

    def classes(self, backend: str, overrides: Mapping[str, str] | None = None) -> dict[str, type[Component]]:
        """The component classes a backend is built from, by kind: the preset's, any overridden by name."""
        names = self.preset(backend).components()
        for kind, name in (overrides or {}).items():
            if kind not in KINDS:
                raise PluginError(f"unknown component kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
            names[kind] = name
        return {kind: self.component(kind, name) for kind, name in names.items()}

    def build(self, backend: str, options: Mapping[str, Any] | None = None,
              overrides: Mapping[str, str] | None = None) -> Backend:
        """Instantiate a backend: the preset's components, any overridden by name, sharing clients; the
        options are checked against the components' schemas first (``flowcraft.options``)."""
        classes = self.classes(backend, overrides)
        opts = validate_options(backend, classes, options or {})
        preset = self.preset(backend)
        if preset.factory and all(preset.components()[kind] == name for kind, name in (overrides or {}).items()):
            built_backend = _load_factory(preset)(opts)
            built_backend.name, built_backend.options = backend, opts
            return built_backend
        shared: dict[str, Any] = {}
        built = {kind: component.from_config(opts, shared) for kind, component in classes.items()}
        return Backend(cast(Queue, built["queue"]), cast(ContextStore, built["context"]),
                       cast(StatusStore, built["status"]), cast(CoordinationStore, built["coordination"]),
                       name=backend, options=opts)


def _load_factory(preset: Preset) -> Callable[[Mapping[str, Any]], Backend]:
    module_name, _, attribute = preset.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # a plugin's broken module is that plugin's failure, reported as such
        raise PluginError(f"backend {preset.name!r}: its factory {preset.factory!r} cannot be imported: "
                          f"{type(exc).__name__}: {exc}", hint="reinstall the package that provides it") from None
    if not callable(factory):
        raise PluginError(f"backend {preset.name!r}: its factory {preset.factory!r} is not callable",
                          hint="report it to the package's authors")
    return cast(Callable[[Mapping[str, Any]], Backend], factory)


def disabled_by_env(env: Mapping[str, str]) -> dict[str, str]:
    """The plugins ``FLOWCRAFT_PLUGINS_DISABLE`` (comma-separated) names, each mapped to ``"env <VARIABLE>"``."""
    found: dict[str, str] = {}
    for variable in (DISABLE_ENV, DISABLE_ENV_OLD):
        for name in env.get(variable, "").split(","):
            if name.strip():
                found.setdefault(name.strip(), f"env {variable}")
    return found


def _info_of(entry_point: importlib.metadata.EntryPoint) -> PluginInfo:
    dist = entry_point.dist
    if dist is None:
        return PluginInfo(entry_point.name, "an unknown distribution", "?")
    return PluginInfo(entry_point.name, dist.name, dist.version)


def _core_version() -> str:
    try:
        return importlib.metadata.version("flowcraft-core")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "?"


def _normalize(name: str) -> str:
    """Distribution and plugin names compare like pip compares them: case and ``-_.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _disable_how(info: PluginInfo) -> str:
    return f'[plugins] disable = ["{info.distribution}"] in flowcraft.toml or {DISABLE_ENV}={info.distribution}'


def _what(kind: str, name: str) -> str:
    return f'backend "{name}"' if kind == PRESET else f"{kind} {name!r}"


def _as_list(returned: Any, hook_name: str) -> Iterable[Any]:
    if returned is None:
        return []
    if not isinstance(returned, list | tuple):
        raise _PluginFault(f"hook {hook_name} returned {type(returned).__name__}, not a list")
    return cast(Iterable[Any], returned)


def _registration(kind: str, item: Any, hook_name: str) -> tuple[str, Any]:
    """The name and target of one item a hook returned, checked against the hook's return type
    (``flowcraft.hookspecs``); anything else is the plugin's fault. A lazy target's class is checked when
    it is imported (``_Entry.load``)."""
    if kind == PRESET:
        if not isinstance(item, Preset):
            raise _PluginFault(f"hook {hook_name} returned {item!r}, not a flowcraft.plugins.Preset")
        return item.name, item
    if kind == NODE_KIND:
        if not (isinstance(item, type) and issubclass(item, InlineKind | JobKind)):
            raise _PluginFault(f"hook {hook_name} returned {item!r}, not a subclass of "
                               "flowcraft.engine.kinds.InlineKind or JobKind")
        if not isinstance(item.uses, str) or not item.uses:
            raise _PluginFault(f"hook {hook_name} returned class {item.__qualname__} without a 'uses' name")
        return item.uses, item
    if isinstance(item, tuple):
        if len(item) == 2 and isinstance(item[0], str) and item[0] and isinstance(item[1], str) \
                and ":" in item[1]:
            return item[0], item[1]
        raise _PluginFault(f"hook {hook_name} returned {item!r}; a lazy component is (name, 'module:Class')")
    if not isinstance(item, type):
        raise _PluginFault(f"hook {hook_name} returned {item!r}; give a class or (name, 'module:Class')")
    base = KINDS[kind]
    if not issubclass(item, base):
        raise _PluginFault(f"hook {hook_name} returned class {item.__qualname__}, not a subclass of "
                           f"flowcraft.spi.{base.__name__}")
    name = getattr(item, "name", "")
    if not isinstance(name, str) or not name:
        raise _PluginFault(f"hook {hook_name} returned class {item.__qualname__} without a 'name'")
    return name, item


def _providing(left_out: Iterable[LeftOut], name: str) -> LeftOut | None:
    """A left-out plugin whose hooks never ran but whose names say it provides ``name`` (``sqs`` ->
    plugin ``sqs`` / ``flowcraft-sqs``; ``dynamodb`` -> ``flowcraft-sqs`` through the install hints)."""
    wanted = {_normalize(name), _normalize(f"flowcraft-{name}"), _normalize(KNOWN_DISTRIBUTIONS.get(name, name))}
    for left in left_out:
        if {_normalize(left.plugin.name), _normalize(left.plugin.distribution)} & wanted:
            return left
    return None


def _install_hint(name: str) -> str:
    distribution = KNOWN_DISTRIBUTIONS.get(name)
    if distribution:
        return f"pip install {distribution}"
    return f"install the plugin that provides {name!r}, or run `flowcraft backends` to see what is installed"


_registry: PluginRegistry | None = None


def registry(disabled: Mapping[str, str] | None = None, *, refresh: bool = False) -> PluginRegistry:
    """The process-wide plugin registry, built on first use. ``disabled`` (plugin or distribution name ->
    where it was disabled) comes from the configuration (``Config.plugins_disable``); by default only
    ``FLOWCRAFT_PLUGINS_DISABLE`` is read. The registry is rebuilt when the disabled set changes."""
    global _registry
    wanted = disabled_by_env(os.environ) if disabled is None else dict(disabled)
    if _registry is None or refresh or _registry.disabled != wanted:
        _registry = PluginRegistry(disabled=wanted)
    return _registry


def current_registry() -> PluginRegistry:
    """The registry last built (with the configuration's disabled plugins), else the default one: what the
    engine looks node kinds up in while it handles jobs, without re-reading the environment each time."""
    return _registry if _registry is not None else registry()
