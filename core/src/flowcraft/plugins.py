"""Plugin discovery and selection by name (hatch style: hooks register named classes).

Built-ins register through the same hooks as third-party distributions. Entry points are loaded once, on
first use; a component given as ``"module:Class"`` is imported only when it is selected.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pluggy

from flowcraft import hookspecs
from flowcraft.errors import PluginError
from flowcraft.spi import Backend, Component, ContextStore, CoordinationStore, Queue, StatusStore

log = logging.getLogger("flowcraft.plugins")

ENTRY_POINT_GROUP = "flowcraft"
DISABLE_ENV = "FLOWCRAFT_DISABLE_PLUGINS"
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
#: Install hints for the backends this project publishes.
KNOWN_DISTRIBUTIONS = {
    "redis": "flowcraft-redis", "rq": "flowcraft-rq", "sqs": "flowcraft-sqs", "dynamodb": "flowcraft-sqs",
    "azure": "flowcraft-azure", "cosmos": "flowcraft-azure", "rabbitmq": "flowcraft-rabbitmq",
    "postgres": "flowcraft-rabbitmq", "kafka": "flowcraft-kafka", "cassandra": "flowcraft-kafka",
}


@dataclass(frozen=True, slots=True)
class Preset:
    """A backend: one named combination of components (config may override any one of them)."""

    name: str
    queue: str
    context: str
    status: str
    coordination: str
    description: str = ""

    def components(self) -> dict[str, str]:
        return {"queue": self.queue, "context": self.context, "status": self.status,
                "coordination": self.coordination}


@dataclass(slots=True)
class _Entry:
    name: str
    target: Any  # a class, or "module:Class"
    plugin: str

    def load(self, kind: str) -> type[Component]:
        if isinstance(self.target, str):
            module_name, _, attribute = self.target.partition(":")
            try:
                self.target = getattr(importlib.import_module(module_name), attribute)
            except ImportError as exc:
                raise PluginError(f"{kind} {self.name!r} from plugin {self.plugin!r} cannot be imported: {exc}",
                                  hint="reinstall that plugin's distribution") from None
        base = KINDS[kind]
        if not (isinstance(self.target, type) and issubclass(self.target, base)):
            raise PluginError(f"{kind} {self.name!r} from plugin {self.plugin!r} is not a {base.__name__}")
        return self.target


class PluginRegistry:
    """Everything the installed plugins register, by kind and name."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.manager = pluggy.PluginManager("flowcraft")
        self.manager.add_hookspecs(hookspecs)
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        from flowcraft.backends import builtin

        self.manager.register(builtin, name="flowcraft-builtin")
        #: plugins whose entry point failed to import: name -> error (reported by `flowcraft backends`)
        self.broken: dict[str, str] = {}
        if load_entry_points:
            self._load_entry_points(disabled)
        self._components: dict[str, dict[str, _Entry]] = {}
        self._presets: dict[str, tuple[Preset, str]] = {}
        self._collect()

    def _load_entry_points(self, disabled: set[str]) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in disabled or self.manager.has_plugin(entry_point.name):
                continue
            try:
                module = entry_point.load()
            except Exception as exc:  # one broken plugin must not take the others down
                self.broken[entry_point.name] = f"{type(exc).__name__}: {exc}"
                log.warning("flowcraft plugin %r could not be loaded: %s", entry_point.name, exc)
                continue
            self.manager.register(module, name=entry_point.name)

    def _collect(self) -> None:
        self._components = {kind: {} for kind in KINDS}
        self._presets = {}
        for kind, hook_name in _HOOKS.items():
            hook = getattr(self.manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin = self.manager.get_name(impl.plugin) or repr(impl.plugin)
                for item in cast(list[Any], impl.function() or []):
                    name = _name_of(item)
                    target = item[1] if isinstance(item, tuple) else item
                    existing = self._components[kind].get(name)
                    if existing is not None:
                        raise PluginError(
                            f"{kind} name {name!r} is registered by both {existing.plugin!r} and {plugin!r}",
                            hint=f"uninstall one of them or block it with {DISABLE_ENV}",
                        )
                    self._components[kind][name] = _Entry(name, target, plugin)
        for impl in self.manager.hook.flowcraft_presets.get_hookimpls():
            plugin = self.manager.get_name(impl.plugin) or repr(impl.plugin)
            for preset in cast(list[Preset], impl.function() or []):
                if preset.name in self._presets:
                    raise PluginError(
                        f"backend preset {preset.name!r} is registered by both "
                        f"{self._presets[preset.name][1]!r} and {plugin!r}",
                        hint=f"uninstall one of them or block it with {DISABLE_ENV}",
                    )
                self._presets[preset.name] = (preset, plugin)

    def presets(self) -> dict[str, Preset]:
        return {name: preset for name, (preset, _) in self._presets.items()}

    def preset_plugin(self, name: str) -> str:
        return self._presets[name][1]

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def component(self, kind: str, name: str) -> type[Component]:
        entry = self._components[kind].get(name)
        if entry is None:
            raise PluginError(f"{kind} {name!r} is not installed", hint=_install_hint(name))
        return entry.load(kind)

    def preset(self, name: str) -> Preset:
        if name not in self._presets:
            known = ", ".join(sorted(self._presets)) or "none"
            raise PluginError(f'backend "{name}" is not installed (installed: {known})', hint=_install_hint(name))
        return self._presets[name][0]

    def build(self, backend: str, options: Mapping[str, Any] | None = None,
              overrides: Mapping[str, str] | None = None) -> Backend:
        """Instantiate a backend: the preset's components, any overridden by name, sharing clients."""
        preset = self.preset(backend)
        names = preset.components()
        for kind, name in (overrides or {}).items():
            if kind not in KINDS:
                raise PluginError(f"unknown component kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
            names[kind] = name
        shared: dict[str, Any] = {}
        opts = dict(options or {})
        built = {kind: self.component(kind, name).from_config(opts, shared) for kind, name in names.items()}
        return Backend(cast(Queue, built["queue"]), cast(ContextStore, built["context"]),
                       cast(StatusStore, built["status"]), cast(CoordinationStore, built["coordination"]),
                       name=backend, options=opts)


def _name_of(target: Any) -> str:
    if isinstance(target, str):
        raise PluginError(f"lazy component {target!r} must be given as (name, 'module:Class')")
    if isinstance(target, tuple):
        return str(target[0])
    name = getattr(target, "name", "")
    if not name:
        raise PluginError(f"component class {target!r} has no 'name'", hint="set a class attribute name = '...'")
    return str(name)


def _install_hint(name: str) -> str:
    distribution = KNOWN_DISTRIBUTIONS.get(name)
    if distribution:
        return f"pip install {distribution}"
    return f"install the plugin that provides {name!r}, or run `flowcraft backends` to see what is installed"


_registry: PluginRegistry | None = None


def registry(refresh: bool = False) -> PluginRegistry:
    """The process-wide plugin registry, built on first use."""
    global _registry
    if _registry is None or refresh:
        _registry = PluginRegistry()
    return _registry
