"""The hooks a Flowcraft plugin implements (pluggy project ``flowcraft``, entry-point group ``flowcraft``).

Each hook returns a list of component classes carrying a unique ``name`` (or ``"module:Class"`` strings,
imported only when selected, so listing plugins never imports heavy client libraries).
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
    """Register backend presets (``flowcraft.plugins.Preset``): a name for a combination of components."""
