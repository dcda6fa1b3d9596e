"""``flowcraft setup --backend azure``: the database and containers (queues: ``AzureQueue.setup``), idempotently."""

from __future__ import annotations

from typing import Any

from flowcraft_azure._clients import CosmosHome, log


async def ensure_container(home: CosmosHome | None, name: str, throughput: int | None,
                           indexing_policy: dict[str, Any] | None = None) -> None:
    """Create the database (with ``throughput`` RU/s when given) and the container (partition key ``/runId``)
    unless they exist; give an existing container the composite indexes of ``indexing_policy`` it lacks.
    Without a home (a container passed in by hand) there is nothing to create."""
    if home is None:
        log.info("Cosmos container %s was passed in: setup leaves it as it is", name)
        return
    from azure.cosmos import PartitionKey

    client = await home.cosmos_client()
    database = await client.create_database_if_not_exists(home.database_name, offer_throughput=throughput)
    kwargs: dict[str, Any] = {"partition_key": PartitionKey(path="/runId")}
    if indexing_policy is not None:
        kwargs["indexing_policy"] = indexing_policy
    container = await database.create_container_if_not_exists(name, **kwargs)
    if indexing_policy is None:
        return
    properties = await container.read()
    wanted = indexing_policy.get("compositeIndexes", [])
    have = properties.get("indexingPolicy", {}).get("compositeIndexes", [])
    if any(index not in have for index in wanted):  # a container made before these indexes existed
        await database.replace_container(container, partition_key=PartitionKey(path="/runId"),
                                         indexing_policy=indexing_policy)
        log.info("updated the indexing policy of Cosmos container %s", name)
