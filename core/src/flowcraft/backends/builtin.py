"""The built-in backends and node kinds, registered through the same hooks as any plugin."""

from __future__ import annotations

from typing import Any

from flowcraft.backends.memory import (
    MemoryContextStore,
    MemoryCoordinationStore,
    MemoryQueue,
    MemoryStatusStore,
)
from flowcraft.engine.kinds import BUILTIN_KINDS
from flowcraft.hookspecs import hookimpl
from flowcraft.plugins import Preset

_SQLITE = "flowcraft.backends.sqlite"


@hookimpl
def flowcraft_queues() -> list[Any]:
    return [MemoryQueue, ("sqlite", f"{_SQLITE}:SqliteQueue")]


@hookimpl
def flowcraft_context_stores() -> list[Any]:
    return [MemoryContextStore, ("sqlite", f"{_SQLITE}:SqliteContextStore")]


@hookimpl
def flowcraft_status_stores() -> list[Any]:
    return [MemoryStatusStore, ("sqlite", f"{_SQLITE}:SqliteStatusStore")]


@hookimpl
def flowcraft_coordination_stores() -> list[Any]:
    return [MemoryCoordinationStore, ("sqlite", f"{_SQLITE}:SqliteCoordinationStore")]


@hookimpl
def flowcraft_presets() -> list[Preset]:
    return [
        Preset("memory", "memory", "memory", "memory", "memory", "in-process only (FlowRuntime, tests)",
               factory="flowcraft.backends.memory:build_backend"),
        Preset("sqlite", "sqlite", "sqlite", "sqlite", "sqlite",
               "embedded, durable: worker processes on one machine share one database file (default)",
               factory=f"{_SQLITE}:build_backend"),
    ]


@hookimpl
def flowcraft_node_kinds() -> list[Any]:
    return list(BUILTIN_KINDS)
