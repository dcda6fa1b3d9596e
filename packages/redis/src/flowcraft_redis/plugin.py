"""Registration (entry point ``flowcraft`` -> ``redis = "flowcraft_redis.plugin"``); imports nothing heavy."""

from __future__ import annotations

from typing import Any

from flowcraft.hookspecs import hookimpl

#: the ``flowcraft.spi`` version this plugin was written for (the registry leaves it out on another)
SPI_VERSION = 2


@hookimpl
def flowcraft_context_stores() -> list[Any]:
    return [("redis", "flowcraft_redis.context:RedisContext")]


@hookimpl
def flowcraft_status_stores() -> list[Any]:
    return [("redis", "flowcraft_redis.status:RedisStatusStore")]


@hookimpl
def flowcraft_coordination_stores() -> list[Any]:
    return [("redis", "flowcraft_redis.coordination:RedisCoordinationStore")]
