"""The hooks a Flowcraft plugin implements (pluggy project ``flowcraft``, entry-point group ``flowcraft``).

Each component hook returns a list (or tuple) of component classes of its kind carrying a unique ``name``, or
``(name, "module:Class")`` pairs imported only when selected, so listing plugins never imports heavy client
libraries; ``flowcraft_presets`` returns ``flowcraft.plugins.Preset`` values. The built-ins register through
these same hooks (``flowcraft.backends.builtin``). A plugin whose hook raises or returns anything else, or
whose names clash with another plugin's, is left out and reported (``flowcraft.plugins``).

``flowcraft_event(event)`` is the one observing hook: it is called with every ``flowcraft.Event`` of every
engine in the process (workers, ``FlowRuntime``, clients) after the App's listeners; a returned awaitable is
awaited; an implementation that raises is logged and never breaks a run. The built-ins do not implement it.

There is no reconciler hook, on purpose: the reconciler (``flowcraft.reconciler.Reconciler``) has no
per-backend code. It works only through the SPI -- ``StatusStore.stalled`` (where each backend queries its
own index: Redis sorted sets, the DynamoDB ``status-lastUpdated`` index, an SQL index),
``CoordinationStore.activity``/``jobs``, ``Queue.enqueue`` and ``StatusStore.transition`` -- so a backend
makes reconciliation fast by implementing those, and every backend gets the same contract-tested recovery
rules (``ReconcilerContract``). ``flowcraft_redis.RedisReconciler`` and ``flowcraft_sqs.SqsReconciler``
only wrap it to rename the stats fields for the seed APIs. A reconciler hook would register a second copy
of the recovery rules that must be kept in step with the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import pluggy

from flowcraft.spi import ContextStore, CoordinationStore, Queue, StatusStore

if TYPE_CHECKING:  # flowcraft.plugins imports this module; the engine imports flowcraft.plugins
    from flowcraft.engine.events import Event
    from flowcraft.engine.kinds import InlineKind, JobKind
    from flowcraft.plugins import Preset

hookspec = pluggy.HookspecMarker("flowcraft")
hookimpl = pluggy.HookimplMarker("flowcraft")

#: ``(name, "module:Class")``: a component imported only when it is selected.
LazyComponent: TypeAlias = tuple[str, str]


@hookspec
def flowcraft_queues() -> Sequence[type[Queue] | LazyComponent]:
    """Register queue classes (subclasses of ``flowcraft.spi.Queue``)."""


@hookspec
def flowcraft_context_stores() -> Sequence[type[ContextStore] | LazyComponent]:
    """Register context store classes (subclasses of ``flowcraft.spi.ContextStore``)."""


@hookspec
def flowcraft_status_stores() -> Sequence[type[StatusStore] | LazyComponent]:
    """Register status store classes (subclasses of ``flowcraft.spi.StatusStore``)."""


@hookspec
def flowcraft_coordination_stores() -> Sequence[type[CoordinationStore] | LazyComponent]:
    """Register coordination store classes (subclasses of ``flowcraft.spi.CoordinationStore``)."""


@hookspec
def flowcraft_presets() -> Sequence[Preset]:
    """Register backend presets (``flowcraft.plugins.Preset``): named components, optionally a wiring factory."""


@hookspec
def flowcraft_event(event: Event) -> object:
    """Observe every ``flowcraft.Event`` of this process's engines (names, payloads: flowcraft.engine.events)."""


@hookspec
def flowcraft_node_kinds() -> Sequence[type[InlineKind] | type[JobKind]]:
    """Register node kinds (``flowcraft.engine.kinds.InlineKind``/``JobKind`` subclasses with a unique ``uses``)."""
