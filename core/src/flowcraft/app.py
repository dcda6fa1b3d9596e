"""App: the blueprints and implementations a worker (or client) loads, e.g. ``myproj.workflows:app``."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowcraft.engine.events import EVENT_NAMES, Listener, Middleware
from flowcraft.engine.graph import Graph, analyze
from flowcraft.engine.kinds import node_kind
from flowcraft.errors import ConfigError
from flowcraft.model import Blueprint
from flowcraft.nodes.base import Implementation

if TYPE_CHECKING:
    from flowcraft.flow import Flow

class App:
    """Blueprints by id, each analysed once, and implementations by ``uses`` key.

    Implementations registered by a ``Flow`` are scoped to that flow's blueprint; ``registry`` holds
    global ones (for declarative blueprints, e.g. TypeScript Flowcraft JSON).
    """

    def __init__(
        self,
        flows: Iterable[Flow] = (),
        blueprints: Iterable[Blueprint] = (),
        registry: Mapping[str, Implementation] | None = None,
        dependencies: Mapping[str, Any] | None = None,
        max_iterations: int = 1000,
        max_subflow_depth: int = 32,
        *,
        listeners: Iterable[Listener | tuple[str, Listener]] = (),
        middleware: Sequence[Middleware] = (),
    ) -> None:
        """``max_iterations``: default loop cap (a blueprint's ``metadata.maxIterations`` overrides it).
        ``max_subflow_depth``: how deep subflow runs may nest (a run's child is at depth 1); a subflow node
        that would start a run deeper fails its run instead, so a blueprint that runs itself ends.
        ``listeners``: called with every ``flowcraft.Event`` (a callable) or the events of one name (an
        ``(event name, callable)`` pair; names in ``flowcraft.engine.events.EVENT_NAMES``, ``"*"`` for all),
        sync or async, in every engine that loads this app: ``flowcraft worker``, ``FlowRuntime``, a
        ``Client`` (the run events it causes). ``middleware``: ``flowcraft.Middleware`` instances wrapping
        every node this app's workers run, outermost first."""
        if max_subflow_depth < 1:
            raise ConfigError(f"max_subflow_depth must be >= 1, got {max_subflow_depth}")
        self.listeners: list[tuple[str, Listener]] = [_listener(item) for item in listeners]
        self.middleware: list[Middleware] = list(middleware)
        for item in self.middleware:
            if not isinstance(item, Middleware):
                raise ConfigError(f"middleware {item!r} is a {type(item).__name__}, not a flowcraft.Middleware",
                                  hint="subclass flowcraft.Middleware and pass instances")
        self.registry: dict[str, Implementation] = dict(registry or {})
        self.dependencies: dict[str, Any] = dict(dependencies or {})
        self.max_iterations = max_iterations
        self.max_subflow_depth = max_subflow_depth
        self._blueprints: dict[str, Blueprint] = {}
        self._scoped: dict[str, dict[str, Implementation]] = {}
        self._graphs: dict[str, Graph] = {}
        self._versions: dict[str, str] = {}
        self._hashes: dict[str, str] = {}
        for flow in flows:
            self.add(flow.to_blueprint(), flow.implementations)
        for blueprint in blueprints:
            self.add(blueprint)

    def add(self, blueprint: Blueprint, implementations: Mapping[str, Implementation] | None = None) -> None:
        if blueprint.id in self._blueprints:
            raise ConfigError(f"blueprint {blueprint.id!r} is registered twice", hint="give each flow a unique id")
        blueprint.validate()
        self._blueprints[blueprint.id] = blueprint
        self._scoped[blueprint.id] = dict(implementations or {})
        self._graphs[blueprint.id] = analyze(blueprint)
        self._hashes[blueprint.id] = blueprint.content_hash
        self._versions[blueprint.id] = blueprint.version or self._hashes[blueprint.id]

    def blueprint(self, blueprint_id: str) -> Blueprint | None:
        return self._blueprints.get(blueprint_id)

    def graph(self, blueprint_id: str) -> Graph | None:
        return self._graphs.get(blueprint_id)

    @property
    def blueprints(self) -> dict[str, Blueprint]:
        return dict(self._blueprints)

    def implementation(self, blueprint_id: str, uses: str) -> Implementation | None:
        scoped = self._scoped.get(blueprint_id, {})
        if uses in scoped:
            return scoped[uses]
        return self.registry.get(uses)

    def has_implementation(self, blueprint_id: str, uses: str) -> bool:
        return node_kind(uses) is not None or self.implementation(blueprint_id, uses) is not None

    def content_hash(self, blueprint_id: str) -> str | None:
        return self._hashes.get(blueprint_id)

    def version(self, blueprint_id: str) -> str | None:
        """What jobs and run records carry to detect workers with another version of a blueprint: the
        blueprint's ``metadata.version``, else its content hash (computed once)."""
        return self._versions.get(blueprint_id)


def _listener(item: Any) -> tuple[str, Listener]:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and callable(item[1]):
        name, listener = item
    elif callable(item):
        name, listener = "*", item
    else:
        raise ConfigError(f"listener {item!r} is neither a callable nor an (event name, callable) pair",
                          hint="pass e.g. listeners=[print] or listeners=[(\"node:error\", alert)]")
    if name != "*" and name not in EVENT_NAMES:
        raise ConfigError(f"unknown event {name!r} for listener {listener!r}",
                          hint=f"known events: {', '.join(EVENT_NAMES)} (or '*' for all)")
    return name, listener


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (an App, or a callable returning one)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"cannot load app {spec!r}", hint="write it as 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for app {spec!r}: {exc}",
                          hint="check the module path and that it is importable from here") from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable(value) and not isinstance(value, App):
        value = value()
    if not isinstance(value, App):
        raise ConfigError(f"{spec!r} is a {type(value).__name__}, not a flowcraft.App")
    return value
