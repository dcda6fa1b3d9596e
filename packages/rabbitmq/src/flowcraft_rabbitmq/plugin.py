"""Registers the ``rabbitmq`` preset and its components (lazily: nothing here imports aio-pika or psycopg)."""

from __future__ import annotations

from typing import Any

from flowcraft.hookspecs import hookimpl
from flowcraft.plugins import Preset

#: the ``flowcraft.spi`` version this plugin was written for (the registry leaves it out on another)
SPI_VERSION = 2
_PACKAGE = "flowcraft_rabbitmq"


@hookimpl
def flowcraft_queues() -> list[Any]:
    return [("rabbitmq", f"{_PACKAGE}.queue:RabbitMqQueue")]


@hookimpl
def flowcraft_context_stores() -> list[Any]:
    return [("postgres", f"{_PACKAGE}.context:PostgresContext")]


@hookimpl
def flowcraft_status_stores() -> list[Any]:
    return [("postgres", f"{_PACKAGE}.status:PostgresStatusStore")]


@hookimpl
def flowcraft_presets() -> list[Preset]:
    return [Preset("rabbitmq", "rabbitmq", "postgres", "postgres", "redis",
                   "RabbitMQ quorum queue + PostgreSQL context and status + Redis coordination",
                   factory=f"{_PACKAGE}.backend:build_backend")]
