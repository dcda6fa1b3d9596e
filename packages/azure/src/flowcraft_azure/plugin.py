"""Registers the ``azure`` preset and its components (lazily: nothing here imports the Azure SDKs)."""

from __future__ import annotations

from typing import Any

from flowcraft.hookspecs import hookimpl
from flowcraft.plugins import Preset

#: the ``flowcraft.spi`` version this plugin was written for (the registry leaves it out on another)
SPI_VERSION = 2

_PACKAGE = "flowcraft_azure"


@hookimpl
def flowcraft_queues() -> list[Any]:
    return [("azure", f"{_PACKAGE}.queue:AzureQueue")]


@hookimpl
def flowcraft_context_stores() -> list[Any]:
    return [("cosmos", f"{_PACKAGE}.context:CosmosDbContext")]


@hookimpl
def flowcraft_status_stores() -> list[Any]:
    return [("cosmos", f"{_PACKAGE}.status:CosmosDbStatusStore")]


@hookimpl
def flowcraft_presets() -> list[Preset]:
    return [Preset("azure", "azure", "cosmos", "cosmos", "redis",
                   "Azure Storage Queue + Cosmos DB (SQL API) context and status + Redis coordination",
                   factory=f"{_PACKAGE}.backend:build_backend")]
