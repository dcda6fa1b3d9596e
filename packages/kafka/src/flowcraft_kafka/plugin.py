"""Registers the ``kafka`` preset and its components (lazily: nothing here imports confluent-kafka or
cassandra-driver)."""

from __future__ import annotations

from typing import Any

from flowcraft.hookspecs import hookimpl
from flowcraft.plugins import Preset

#: the ``flowcraft.spi`` version this plugin was written for
SPI_VERSION = 2

_PACKAGE = "flowcraft_kafka"


@hookimpl
def flowcraft_queues() -> list[Any]:
    return [("kafka", f"{_PACKAGE}.queue:KafkaQueue")]


@hookimpl
def flowcraft_context_stores() -> list[Any]:
    return [("cassandra", f"{_PACKAGE}.context:CassandraContext")]


@hookimpl
def flowcraft_status_stores() -> list[Any]:
    return [("cassandra", f"{_PACKAGE}.status:CassandraStatusStore")]


@hookimpl
def flowcraft_presets() -> list[Preset]:
    return [Preset("kafka", "kafka", "cassandra", "cassandra", "redis",
                   "Kafka queue + Cassandra context and status + Redis coordination",
                   factory=f"{_PACKAGE}.backend:build_backend")]
