"""What the Cosmos DB stores share: their container (passed in, or from an ``AzureClients``), setup, 429 retries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from flowcraft.errors import ConfigError
from flowcraft_azure._clients import AzureClients, CosmosHome, Fixed, Shared, Source, Throttle
from flowcraft_azure.options import AzureOptions

if TYPE_CHECKING:
    from azure.cosmos.aio import ContainerProxy


class CosmosContainerStore:
    """A store kept in one Cosmos DB container (partition key ``/runId``)."""

    Options: ClassVar[type[Any] | None] = AzureOptions
    #: the option naming the container
    container_option: ClassVar[str] = ""
    #: the container's indexing policy (None: Cosmos's default, every path)
    indexing_policy: ClassVar[dict[str, Any] | None] = None

    def __init__(self, container: ContainerProxy | None = None, *, source: Source[ContainerProxy] | None = None,
                 home: CosmosHome | None = None, container_name: str | None = None, throughput: int | None = None,
                 throttle: Throttle | None = None) -> None:
        if source is None:
            if container is None:
                raise ConfigError("pass container=... (an azure.cosmos.aio ContainerProxy) or build the store from "
                                  "config")
            source = Fixed(container)
            container_name = container.id
        self._source = source
        self._home = home
        self.container_name = container_name or ""
        self.throughput = throughput
        self._throttle = throttle or Throttle()

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = AzureOptions.parse(options)
        return cls.build(parsed, AzureClients.shared(shared, parsed))

    @classmethod
    def build(cls, o: AzureOptions, clients: AzureClients) -> Self:
        """The store its options describe, on the backend's ``clients``."""
        o.require_cosmos()
        name = str(getattr(o, cls.container_option))
        return cls(source=Shared(clients, lambda: clients.container(name)), home=clients, container_name=name,
                   throughput=o.cosmos_throughput,
                   throttle=Throttle(o.cosmos_throttle_retries, o.cosmos_throttle_max_wait,
                                     server=f"Cosmos DB at {o.cosmos_endpoint}"))

    async def setup(self) -> None:
        from flowcraft_azure.provisioning import ensure_container

        await ensure_container(self._home, self.container_name, self.throughput, self.indexing_policy)

    async def close(self) -> None:
        await self._source.close()
