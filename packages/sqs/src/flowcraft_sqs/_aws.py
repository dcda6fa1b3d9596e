"""Options, shared aiobotocore clients and DynamoDB attribute helpers used by every component.

Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` / ``AWS_PROFILE``, instance roles...); they are never read, stored or logged here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, overload

from flowcraft.errors import ConfigError, FlowcraftError, StoreLimitError
from flowcraft.spi import QueueOptions, option, parse_options

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger("flowcraft.sqs")

#: DynamoDB's item size limit (attribute names and values, UTF-8).
MAX_ITEM_BYTES = 400 * 1024
#: DynamoDB key length limits (UTF-8 bytes).
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024
#: SQS DelaySeconds / the cap of one re-delay hop.
MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_SECONDS = 43200


class ItemTooLargeError(StoreLimitError):
    """A value does not fit in one DynamoDB item (400 KB)."""


class MessageTooLargeError(StoreLimitError):
    """A job does not fit in one SQS message."""


class KeyTooLongError(StoreLimitError):
    """A run id or key cannot be a DynamoDB key (empty, or longer than DynamoDB allows)."""


# ------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class SqsOptions(QueueOptions):
    """The options of every component of the ``sqs`` backend (see the package README); ``visibility_timeout``
    comes from ``QueueOptions``."""

    endpoint_url: str | None = option(None, "another endpoint for SQS and DynamoDB (LocalStack, moto); "
                                            "default AWS's own")
    dynamodb_endpoint_url: str | None = option(None, "a separate endpoint for DynamoDB only (default endpoint_url)")
    region: str = option("us-east-1", "AWS region")
    queue_name: str = option("flowcraft-queue", "the job queue (.fifo is appended when fifo is on)")
    queue_url: str | None = option(None, "use this queue instead of looking queue_name up")
    dead_letter_queue_name: str | None = option(None, "the dead-letter queue setup creates (default "
                                                      "<queue>-dlq, or <queue>-dlq.fifo)")
    dead_letter_queue_url: str | None = option(None, "use this dead-letter queue (default: the redrive policy's "
                                                     "target, else the name above)")
    max_receive_count: int = option(10, "receives without being handled before SQS moves a message to the "
                                        "dead-letter queue")
    fifo: bool = option(False, "FIFO queues instead of standard ones")
    table_prefix: str = option("flowcraft-", "table names: <prefix>contexts, <prefix>statuses, "
                                             "<prefix>coordination")
    context_table: str | None = option(None, "explicit name of the context table")
    status_table: str | None = option(None, "explicit name of the status table")
    coordination_table: str | None = option(None, "explicit name of the coordination table")
    status_index: str = option("status-lastUpdated", "the status table's global secondary index")
    wait_time_seconds: int = option(20, "upper bound of one long poll, 0 to 20 (the worker's poll wait is "
                                        "used when shorter)")
    # Never expire by default: the sqs preset keeps a run's context (its outputs and result) in the run item,
    # and finished runs are deleted by the ``retention`` setting as on every other backend.
    ttl_seconds: int = option(0, "lifetime of coordination items (and of the sqs preset's contexts), refreshed "
                                 "when written; 0 = never expire (finished runs are deleted by `retention`)")
    max_message_bytes: int = option(256 * 1024, "largest job message (1048576 where SQS allows 1 MiB)")
    message_retention_seconds: int = option(14 * 24 * 3600, "retention of both queues (setup)")
    max_pool_connections: int = option(64, "HTTP connections per client")

    def __post_init__(self) -> None:
        if self.visibility_timeout <= 0 or self.visibility_timeout > MAX_VISIBILITY_SECONDS:
            raise ConfigError(f"option visibility_timeout: must be between 0 and {MAX_VISIBILITY_SECONDS} seconds "
                              f"(SQS's limit), got {self.visibility_timeout:g}")
        if not 0 <= self.wait_time_seconds <= 20:
            raise ConfigError(f"option wait_time_seconds: must be between 0 and 20 (SQS long polling), got "
                              f"{self.wait_time_seconds}")
        if self.max_receive_count < 1:
            raise ConfigError(f"option max_receive_count: must be at least 1, got {self.max_receive_count}")

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> SqsOptions:
        """The keys of ``options`` this backend declares (others belong to other components), coerced to
        their types (values from ``FLOWCRAFT_OPT_*`` and ``-o`` are strings)."""
        return parse_options(cls, options)

    @property
    def main_queue_name(self) -> str:
        """The queue's name: from ``queue_url`` when given, else ``queue_name`` (``.fifo`` added for FIFO)."""
        name = self.queue_url.rstrip("/").rsplit("/", 1)[-1] if self.queue_url else self.queue_name
        if self.fifo and not name.endswith(".fifo"):
            name += ".fifo"
        return name

    @property
    def dlq_name(self) -> str:
        if self.dead_letter_queue_name:
            name = self.dead_letter_queue_name
            return name + ".fifo" if self.fifo and not name.endswith(".fifo") else name
        base = self.main_queue_name.removesuffix(".fifo")
        return f"{base}-dlq.fifo" if self.fifo else f"{base}-dlq"

    def endpoint(self, service: str) -> str | None:
        """The endpoint of ``service`` ("sqs" or "dynamodb"): ``dynamodb_endpoint_url`` for DynamoDB when set,
        else ``endpoint_url`` (None: AWS's own)."""
        if service == "dynamodb" and self.dynamodb_endpoint_url:
            return self.dynamodb_endpoint_url
        return self.endpoint_url

    def table(self, kind: str) -> str:
        explicit = {"contexts": self.context_table, "statuses": self.status_table,
                    "coordination": self.coordination_table}[kind]
        return explicit or f"{self.table_prefix}{kind}"


# ------------------------------------------------------------------------------------------- clients
#: The services a backend talks to (the stubs type aiobotocore's create_client per service name).
AwsService = Literal["sqs", "dynamodb"]


ClientT = TypeVar("ClientT")
ClientT_co = TypeVar("ClientT_co", covariant=True)


class ClientSource(Protocol[ClientT_co]):
    """Where a component gets its aiobotocore client from."""

    async def get(self) -> ClientT_co: ...

    async def close(self) -> None: ...


class FixedClient(Generic[ClientT]):
    """A client the user created and closes (the seed-style explicit API)."""

    def __init__(self, client: ClientT) -> None:
        self._client = client

    async def get(self) -> ClientT:
        return self._client

    async def close(self) -> None:
        return None


class AwsClients:
    """One aiobotocore session and one client per service, shared by the components of one backend (the
    ``sqs`` preset's factory passes them to each; built one by one, through ``shared``); closed when the last
    component closes.
    ``endpoints``: service -> endpoint URL (a service not named, or None: AWS's own)."""

    def __init__(self, endpoints: Mapping[str, str | None], region: str, max_pool_connections: int = 64) -> None:
        self.endpoints = dict(endpoints)
        self.region = region
        self.max_pool_connections = max_pool_connections
        self._clients: dict[str, Any] = {}
        self._stack: AsyncExitStack | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._users = 0

    @classmethod
    def for_options(cls, options: SqsOptions) -> AwsClients:
        """The clients the options name (region, endpoints, pool size)."""
        endpoints = {service: options.endpoint(service) for service in ("sqs", "dynamodb")}
        return cls(endpoints, options.region, options.max_pool_connections)

    @classmethod
    def shared(cls, shared: dict[str, Any], options: SqsOptions) -> AwsClients:
        """For components built one by one (``from_config``, a backend overriding a component): the clients
        of the first component built with the same region and endpoints."""
        fresh = cls.for_options(options)
        key = f"aws:{options.region}:{fresh.endpoints['sqs'] or ''}:{fresh.endpoints['dynamodb'] or ''}"
        clients = shared.get(key)
        if not isinstance(clients, AwsClients):
            clients = shared[key] = fresh
        return clients

    @overload
    def source(self, service: Literal["sqs"]) -> ClientSource[SQSClient]: ...
    @overload
    def source(self, service: Literal["dynamodb"]) -> ClientSource[DynamoDBClient]: ...
    def source(self, service: AwsService) -> ClientSource[Any]:
        self._users += 1
        return _SharedClient(self, service)

    async def client(self, service: AwsService) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # clients (aiohttp sessions) belong to the loop that created them
            self._clients, self._stack, self._lock, self._loop = {}, None, asyncio.Lock(), loop
        existing = self._clients.get(service)
        if existing is not None:
            return existing
        assert self._lock is not None
        async with self._lock:
            if service not in self._clients:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                if self._stack is None:
                    self._stack = AsyncExitStack()
                config = AioConfig(max_pool_connections=self.max_pool_connections,
                                   retries={"mode": "standard", "max_attempts": 5},
                                   connect_timeout=10, read_timeout=70)
                creator = get_session().create_client(service, region_name=self.region,
                                                      endpoint_url=self.endpoints.get(service), config=config)
                self._clients[service] = await self._stack.enter_async_context(creator)
            return self._clients[service]

    async def _release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._stack is not None:
            stack, self._stack, self._clients = self._stack, None, {}
            if self._loop is asyncio.get_running_loop():
                await stack.aclose()


class _SharedClient:
    def __init__(self, clients: AwsClients, service: AwsService) -> None:
        self._clients = clients
        self._service = service
        self._closed = False

    async def get(self) -> Any:
        return await self._clients.client(self._service)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._clients._release()


def source_of(client: ClientT | None, shared_source: ClientSource[ClientT] | None) -> ClientSource[ClientT]:
    if shared_source is not None:
        return shared_source
    if client is None:
        raise ConfigError("pass client=... (an aiobotocore client) or build the component from config")
    return FixedClient(client)


# ------------------------------------------------------------------------------------------- errors
def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def is_client_error(exc: BaseException, *codes: str) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and (not codes or error_code(exc) in codes)


def check_item_size(item: Mapping[str, Mapping[str, Any]], what: str) -> None:
    """Raise a one-line error if ``item`` exceeds DynamoDB's 400 KB item limit."""
    size = item_size(item)
    if size > MAX_ITEM_BYTES:
        raise ItemTooLargeError(
            f"{what} is {size / 1024:.0f} KB; a DynamoDB item holds at most 400 KB",
            hint="keep large payloads in S3 (or another blob store) and put a reference in the context",
        )


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    size = 0
    for name, value in item.items():
        size += len(name.encode())
        for kind, raw in value.items():
            if kind in ("S", "N"):
                size += len(str(raw).encode("utf-8", "surrogatepass"))
            elif kind == "BOOL":
                size += 1
            else:
                size += len(json.dumps(raw))
    return size


def is_key(value: str, limit: int) -> bool:
    """Whether DynamoDB can hold ``value`` as a key of at most ``limit`` bytes (see ``check_key``)."""
    try:
        check_key(value, "key", limit)
    except KeyTooLongError:
        return False
    return True


def check_key(value: str, what: str, limit: int) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise KeyTooLongError(f"{what} {value!r} is not valid Unicode text; DynamoDB keys are UTF-8") from None
    if size == 0:
        raise KeyTooLongError(f"{what} must not be empty: DynamoDB keys cannot be empty strings")
    if size > limit:
        raise KeyTooLongError(f"{what} is {size} bytes; DynamoDB allows at most {limit} bytes for this key")


# ------------------------------------------------------------------------------------------- attributes
def S(value: str) -> dict[str, str]:  # DynamoDB's type letters
    return {"S": value}


def N(value: float | int) -> dict[str, str]:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("DynamoDB numbers must be finite")
        if value.is_integer() and abs(value) < 1e15:
            return {"N": str(int(value))}
        return {"N": repr(value)}
    return {"N": str(value)}


def num(attribute: Mapping[str, Any] | None, default: float = 0.0) -> float:
    if not attribute or "N" not in attribute:
        return default
    return float(attribute["N"])


def text(attribute: Mapping[str, Any] | None) -> str | None:
    if not attribute or "S" not in attribute:
        return None
    return str(attribute["S"])


def dumps(value: Any, what: str) -> str:
    """JSON text of ``value`` (compact, unicode kept); a one-line error if it is not JSON data."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FlowcraftError(f"{what} cannot be stored: {exc}",
                             hint="store JSON data (dict, list, str, int, float, bool, None)") from None


def loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def expired(item: Mapping[str, Any] | None, now: float) -> bool:
    """Whether an item's ``ttl`` has passed (DynamoDB deletes expired items lazily; we treat them as absent)."""
    return item is not None and "ttl" in item and num(item["ttl"]) < now


def prune(request: dict[str, Any]) -> dict[str, Any]:
    """Drop expression attribute names/values no expression of ``request`` uses (DynamoDB rejects them)."""
    import re

    used = " ".join(str(request.get(k, "")) for k in ("UpdateExpression", "ConditionExpression",
                                                       "KeyConditionExpression", "FilterExpression",
                                                       "ProjectionExpression"))
    tokens = set(re.findall(r"[#:][A-Za-z0-9_]+", used))
    for field in ("ExpressionAttributeNames", "ExpressionAttributeValues"):
        if field in request:
            kept = {k: v for k, v in request[field].items() if k in tokens}
            if kept:
                request[field] = kept
            else:
                del request[field]
    return request


def backoff(attempt: int, base: float = 0.01, cap: float = 0.5) -> float:
    import random

    return float(min(cap, base * (2 ** min(attempt, 10))) * (0.5 + random.random()))


# ------------------------------------------------------------------------------------------- batch calls
BATCH_GET = 100  # keys per BatchGetItem
BATCH_WRITE = 25  # requests per BatchWriteItem


async def batch_get(client: DynamoDBClient, table: str, keys: list[dict[str, Any]],
                    **extra: Any) -> list[dict[str, Any]]:
    """Consistent reads of ``keys`` (any number, no duplicates; chunks of 100 read concurrently), retrying
    unprocessed ones; the items found."""

    async def chunk(part: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        request: dict[str, Any] = {table: {"Keys": part, "ConsistentRead": True, **extra}}
        attempt = 0
        while request:
            response = await client.batch_get_item(RequestItems=request)
            found += response.get("Responses", {}).get(table, [])
            request = response.get("UnprocessedKeys") or {}
            if request:
                attempt += 1
                await asyncio.sleep(backoff(attempt))
        return found

    parts = await asyncio.gather(*(chunk(keys[i : i + BATCH_GET]) for i in range(0, len(keys), BATCH_GET)))
    return [item for part in parts for item in part]


async def batch_write(client: DynamoDBClient, table: str, requests: list[dict[str, Any]]) -> None:
    """Put/Delete ``requests`` (any number; no two for one key in a chunk of 25), retrying unprocessed ones."""
    for start in range(0, len(requests), BATCH_WRITE):
        pending: dict[str, Any] = {table: requests[start : start + BATCH_WRITE]}
        attempt = 0
        while pending:
            response = await client.batch_write_item(RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if pending:
                attempt += 1
                await asyncio.sleep(backoff(attempt))
