"""The ``azure`` preset's factory: the Storage Queue and the Cosmos DB stores on one ``AzureClients``, and the
Redis coordination store (``flowcraft_redis``) on its own client.

The components share no store, so they take no fast path together: ``Backend.capabilities`` is all off (the
engine writes contexts and enqueues fired jobs itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.spi import Backend, parse_options
from flowcraft_azure._clients import AzureClients
from flowcraft_azure.context import CosmosDbContext
from flowcraft_azure.options import AzureOptions
from flowcraft_azure.queue import AzureQueue
from flowcraft_azure.status import CosmosDbStatusStore
from flowcraft_redis import RedisCoordinationStore, make_client
from flowcraft_redis.options import RedisOptions


def build_backend(options: Mapping[str, Any]) -> Backend:
    """The ``azure`` backend from its validated options."""
    parsed = AzureOptions.parse(options)
    redis = parse_options(RedisOptions, options)
    clients = AzureClients(parsed)
    coordination = RedisCoordinationStore(make_client(redis.redis_url), key_prefix=redis.key_prefix,
                                          state_ttl_seconds=redis.state_ttl_seconds)
    return Backend(AzureQueue.build(parsed, clients), CosmosDbContext.build(parsed, clients),
                   CosmosDbStatusStore.build(parsed, clients), coordination)
