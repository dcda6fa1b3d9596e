"""Shared aio clients (Azure Storage Queue, Cosmos DB), item ids, JSON and the 429 retry used by every component.

Secrets (the storage connection string, the Cosmos key) are held by the SDK clients only; they are never
logged, and errors that could carry them go through ``flowcraft.config.redact_text``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from flowcraft.config import redact_text
from flowcraft.errors import ConfigError, ServerUnreachableError, StoreLimitError
from flowcraft_azure.options import AzureOptions

if TYPE_CHECKING:
    from azure.cosmos.aio import ContainerProxy, CosmosClient, DatabaseProxy
    from azure.storage.queue.aio import QueueClient, QueueServiceClient

log = logging.getLogger("flowcraft.azure")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

#: Cosmos DB's limit on an item id (characters).
MAX_ID_CHARS = 255


class ItemTooLargeError(StoreLimitError):
    """A value does not fit in one Cosmos DB item (2 MB)."""


class MessageTooLargeError(StoreLimitError):
    """A job does not fit in one Azure Storage Queue message (64 KB)."""


class InvalidKeyError(StoreLimitError):
    """A run id or context key that cannot be stored (empty, or not valid Unicode)."""


# ------------------------------------------------------------------------------------------- sources
class CosmosHome(Protocol):
    """Where setup creates the database and containers: a CosmosClient and the database's name."""

    @property
    def database_name(self) -> str: ...

    async def cosmos_client(self) -> CosmosClient: ...


class FixedHome:
    """A CosmosClient the caller created and closes (the seed-style explicit API)."""

    def __init__(self, client: CosmosClient, database_name: str) -> None:
        self._client = client
        self.database_name = database_name

    async def cosmos_client(self) -> CosmosClient:
        return self._client


class Source(Protocol[T_co]):
    """Where a component gets its SDK object from."""

    async def get(self) -> T_co: ...

    async def close(self) -> None: ...


class Fixed(Generic[T]):
    """An object the caller created and closes (the seed-style explicit API)."""

    def __init__(self, value: T) -> None:
        self._value = value

    async def get(self) -> T:
        return self._value

    async def close(self) -> None:
        return None


class AzureClients:
    """One QueueServiceClient and one CosmosClient for the components of one backend, made lazily in the
    running event loop (aiohttp sessions belong to the loop that made them) and closed when the last
    component closes. The preset's factory passes one to each component; components built one by one
    share one through ``shared``."""

    def __init__(self, options: AzureOptions) -> None:
        self.options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._service: QueueServiceClient | None = None
        self._cosmos: CosmosClient | None = None
        self._database: DatabaseProxy | None = None
        self._users = 0
        #: bumped whenever the SDK clients are dropped (another event loop, closed): ``Shared`` makes its
        #: object again then, and reuses it otherwise (a QueueClient or ContainerProxy per call costs a pipeline)
        self.generation = 0

    @classmethod
    def shared(cls, shared: dict[str, Any], options: AzureOptions) -> AzureClients:
        key = f"azure:{hashlib.sha256((options.azure_storage_connection_string or '').encode()).hexdigest()[:16]}:" \
              f"{options.cosmos_endpoint or ''}:{options.cosmos_database}"
        clients = shared.get(key)
        if not isinstance(clients, AzureClients):
            clients = shared[key] = cls(options)
        return clients

    def check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._service, self._cosmos, self._database = loop, None, None, None
            self.generation += 1

    def service(self) -> QueueServiceClient:
        self.check_loop()
        if self._service is None:
            from azure.storage.queue.aio import QueueServiceClient

            try:
                # the SDK's default backoff (15 s, then 18 s, 24 s) would stall a worker for a minute on one
                # refused request; the engine retries a failed job itself
                service = QueueServiceClient.from_connection_string(
                    self.options.require_storage(), retry_total=3, initial_backoff=1, increment_base=2,
                    connection_timeout=10, **transport_settings())
                slim_pipeline(service)  # its queue clients share its policies
                self._service = service
            except ValueError as exc:
                raise ConfigError(f"option azure_storage_connection_string: {redact_text(str(exc))}",
                                  hint="copy it from the storage account's Access keys page (or use Azurite's "
                                       "development account)") from None
        return self._service

    def queue(self, name: str) -> QueueClient:
        return self.service().get_queue_client(name)

    def database(self) -> DatabaseProxy:
        self.check_loop()
        if self._database is None:
            from azure.cosmos.aio import CosmosClient

            endpoint, key = self.options.require_cosmos()
            kwargs: dict[str, Any] = {
                "retry_throttle_total": self.options.cosmos_throttle_retries,
                "retry_throttle_backoff_max": int(self.options.cosmos_throttle_max_wait),
                # the Cosmos client hands none of its keyword arguments to the transport it makes itself
                "transport": cached_ssl_transport(**transport_settings()),
            }
            if self.options.cosmos_ca_cert is not None:
                kwargs["connection_verify"] = str(self.options.cosmos_ca_cert)
            try:
                self._cosmos = CosmosClient(endpoint, credential=key, **kwargs)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"options cosmos_endpoint/cosmos_key: {redact_text(str(exc))}",
                                  hint="the endpoint is https://<account>.documents.azure.com:443/ and the key "
                                       "the account's base64 key") from None
            slim_pipeline(getattr(self._cosmos.client_connection, "pipeline_client", None))
            self._database = self._cosmos.get_database_client(self.options.cosmos_database)
        return self._database

    @property
    def database_name(self) -> str:
        return self.options.cosmos_database

    async def cosmos_client(self) -> CosmosClient:
        self.database()
        assert self._cosmos is not None
        return self._cosmos

    def container(self, name: str) -> ContainerProxy:
        return self.database().get_container_client(name)

    def use(self) -> None:
        self._users += 1

    async def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        service, cosmos = self._service, self._cosmos
        self._service, self._cosmos, self._database = None, None, None
        self.generation += 1
        if self._loop is not asyncio.get_running_loop():
            return
        if service is not None:
            await service.close()
        if cosmos is not None:
            await cosmos.close()


class Shared(Generic[T]):
    """An SDK object of an ``AzureClients`` (made again when the event loop changes); closing the last one
    closes the clients."""

    def __init__(self, clients: AzureClients, make: Callable[[], T]) -> None:
        self._clients = clients
        self._make = make
        self._closed = False
        self._made: T | None = None
        self._generation = -1
        clients.use()

    async def get(self) -> T:
        clients = self._clients
        clients.check_loop()
        if self._made is None or self._generation != clients.generation:
            self._made, self._generation = self._make(), clients.generation
        return self._made

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._clients.release()


def transport_settings() -> dict[str, Any]:
    """Keyword arguments for both SDK clients' aiohttp transport. ``use_env_settings`` (aiohttp's
    ``trust_env``) makes every request look up a netrc file and the proxy variables, each in a worker thread
    (two thread hops per request); when the environment has neither, turning it off changes nothing else."""
    import os
    import urllib.request

    netrc = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    if urllib.request.getproxies_environment() or os.path.exists(netrc):
        return {}
    return {"use_env_settings": False}


def idle_policy(policy: Any) -> bool:
    """Whether an SDK pipeline policy would do nothing for any request the components send: no proxy, hook,
    HTTP logging or distributed tracing configured (when the client is made; the components never pass the
    per-call options that turn them on)."""
    from azure.core.settings import settings

    name = type(policy).__name__
    if name == "ProxyPolicy":
        return not getattr(policy, "proxies", None)
    if name in ("CustomHookPolicy", "StorageRequestHook"):
        return getattr(policy, "_request_callback", None) is None \
            and getattr(policy, "_response_callback", None) is None
    if name in ("NetworkTraceLoggingPolicy", "StorageLoggingPolicy"):
        return getattr(policy, "enable_http_logger", None) is False
    if name == "HttpLoggingPolicy":
        return not logging.getLogger("azure.core.pipeline.policies.http_logging_policy").isEnabledFor(logging.INFO)
    if name == "CosmosHttpLoggingPolicy":
        return getattr(policy, "_enable_diagnostics_logging", None) is False
    if name == "DistributedTracingPolicy":
        return not settings.tracing_enabled() and settings.tracing_implementation() is None
    return False


def slim_pipeline(owner: Any) -> bool:
    """Drop the idle policies (``idle_policy``) from the pipeline of an SDK client (``owner._pipeline``): each
    is an async frame and a few lookups on every request — about a third of the Cosmos client's CPU per
    request here. The SDKs have no option for it, so this reads their pipeline's private attributes; where
    they are not as expected (another SDK version) the pipeline is left as it is. True when slimmed."""
    from azure.core.pipeline import AsyncPipeline

    pipeline = getattr(owner, "_pipeline", None)
    runners = getattr(pipeline, "_impl_policies", None)
    transport = getattr(pipeline, "_transport", None)
    if not isinstance(runners, list) or transport is None:
        return False
    policies: list[Any] = [getattr(runner, "_policy", runner) for runner in runners]
    kept: list[Any] = [policy for policy in policies if not idle_policy(policy)]
    if len(kept) == len(policies):
        return False
    owner._pipeline = AsyncPipeline(transport, kept)
    return True


def cached_ssl_transport(**kwargs: Any) -> Any:
    """An aiohttp transport that builds the SSL context of a CA file once: azure-core's builds a new one
    (reading and parsing the file, ~0.3 ms) for every request that passes ``connection_verify=<path>``, as
    the Cosmos client does with ``cosmos_ca_cert``."""
    import ssl

    from azure.core.pipeline.transport._aiohttp import AioHttpTransport  # the typed module (as azure-core imports it)

    class Transport(AioHttpTransport):
        _contexts: dict[tuple[Any, Any], ssl.SSLContext] = {}

        def _build_ssl_config(self, cert: Any, verify: Any) -> Any:
            if verify in (True, False) and not cert:
                return verify
            key = (tuple(cert) if isinstance(cert, list) else cert, verify)
            context = self._contexts.get(key)
            if context is None:  # what azure-core builds, once
                context = ssl.create_default_context(cafile=None if verify in (True, False) else verify)
                if cert:
                    context.load_cert_chain(*cert)
                self._contexts[key] = context
            return context

    return Transport(**kwargs)


# ------------------------------------------------------------------------------------------- ids and JSON
def item_id(text: str, what: str) -> str:
    """A Cosmos DB item id for an arbitrary string: Cosmos forbids ``/ \\ ? #`` in ids and limits them to 255
    characters, so ids are ``b`` + the key's UTF-8 in unpadded base64url, or ``h`` + its SHA-256 when that
    would be too long (the string itself is kept in the item; nothing is parsed back out of an id)."""
    if not text:
        raise InvalidKeyError(f"{what} must not be empty")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKeyError(f"{what} {text!r} is not valid Unicode text") from None
    encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(encoded) + 1 <= MAX_ID_CHARS:
        return "b" + encoded
    return "h" + hashlib.sha256(raw).hexdigest()


def dumps(value: Any) -> str:
    """Compact JSON text (unicode kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def retry_after(exc: BaseException) -> float | None:
    """The server's retry-after of a throttled response, in seconds (``x-ms-retry-after-ms``)."""
    headers = getattr(exc, "headers", None) or getattr(getattr(exc, "response", None), "headers", None) or {}
    for name in ("x-ms-retry-after-ms", "Retry-After-Ms"):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) / 1000.0)
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return None


def unreachable(exc: BaseException, server: str) -> ServerUnreachableError | None:
    """The one-line error for a request that never reached ``server`` (connection refused, DNS, TLS), else None:
    a worker keeps trying such a server for a grace period, a command reports it at once."""
    from azure.core.exceptions import ServiceRequestError

    if not isinstance(exc, ServiceRequestError):
        return None
    detail = redact_text((str(exc).splitlines() or [""])[0])
    return ServerUnreachableError(f"{server} cannot be reached: {detail}",
                                  hint="check the endpoint in the options and that the server is up")


class Throttle:
    """Retries a Cosmos DB call the server throttled (HTTP 429) after its retry-after, on top of the SDK's own
    retries, up to ``retries`` times and ``max_wait`` seconds in all; a request that never reached the server
    is a ``ServerUnreachableError`` naming ``server``; anything else is raised at once."""

    def __init__(self, retries: int = 9, max_wait: float = 30.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, server: str = "Cosmos DB") -> None:
        self.retries = retries
        self.max_wait = max_wait
        self.server = server
        self._sleep = sleep

    async def __call__(self, call: Callable[[], Awaitable[T]]) -> T:
        waited = 0.0
        attempt = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                lost = unreachable(exc, self.server)
                if lost is not None:
                    raise lost from None
                if status_code(exc) != 429 or attempt >= self.retries:
                    raise
                pause = retry_after(exc)
                if pause is None:
                    pause = min(1.0, 0.01 * 2 ** attempt) * (0.5 + random.random())
                if waited + pause > self.max_wait:
                    raise
                attempt += 1
                waited += pause
                log.debug("Cosmos DB throttled a request; retrying in %.3fs", pause)
                await self._sleep(pause)
