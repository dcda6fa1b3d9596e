"""Registration (entry point ``flowcraft`` -> ``rq = "flowcraft_rq.plugin"``); imports nothing heavy."""

from __future__ import annotations

from typing import Any

from flowcraft.hookspecs import hookimpl
from flowcraft.plugins import Preset

#: the ``flowcraft.spi`` version this plugin was written for (the registry leaves it out on another)
SPI_VERSION = 2


@hookimpl
def flowcraft_queues() -> list[Any]:
    return [("rq", "flowcraft_rq.queue:RqQueue")]


@hookimpl
def flowcraft_presets() -> list[Preset]:
    return [Preset("rq", "rq", "redis", "redis", "redis",
                   "rq queue + Redis context, status and coordination (one Redis server or a Redis Cluster)",
                   factory="flowcraft_rq.backend:build_backend")]
