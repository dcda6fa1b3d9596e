"""The hooks a Flowcraft plugin implements (pluggy project ``flowcraft``, entry-point group ``flowcraft``).

Each hook returns a list of component classes carrying a unique ``name`` (or ``"module:Class"`` strings,
imported only when selected, so listing plugins never imports heavy client libraries). The built-ins
register through these same hooks (``flowcraft.backends.builtin``). A plugin whose hook raises, or whose
names clash with another plugin's, is left out and reported (``flowcraft.plugins``).

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

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("flowcraft")
hookimpl = pluggy.HookimplMarker("flowcraft")


@hookspec
def flowcraft_queues() -> list[Any]:
    """Register queue classes (subclasses of ``flowcraft.spi.Queue``)."""


@hookspec
def flowcraft_context_stores() -> list[Any]:
    """Register context store classes (subclasses of ``flowcraft.spi.ContextStore``)."""


@hookspec
def flowcraft_status_stores() -> list[Any]:
    """Register status store classes (subclasses of ``flowcraft.spi.StatusStore``)."""


@hookspec
def flowcraft_coordination_stores() -> list[Any]:
    """Register coordination store classes (subclasses of ``flowcraft.spi.CoordinationStore``)."""


@hookspec
def flowcraft_presets() -> list[Any]:
    """Register backend presets (``flowcraft.plugins.Preset``): named components, optionally a wiring factory."""
