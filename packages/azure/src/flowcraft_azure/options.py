"""The options of the ``azure`` backend's components (one flat mapping, see the package README).

The Redis coordination store (``flowcraft_redis``) declares its own: ``redis_url``, ``key_prefix``,
``state_ttl_seconds``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flowcraft.errors import ConfigError
from flowcraft.spi import QueueOptions, option, parse_options

#: Azure Storage Queue limits.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600
MAX_MESSAGES_PER_RECEIVE = 32
#: Cosmos DB's item size limit.
MAX_ITEM_BYTES = 2 * 1024 * 1024

ENCODINGS = ("base64", "json")
#: the options holding secrets (masked wherever options are shown, and in ``repr``)
SECRET_OPTIONS = frozenset({"azure_storage_connection_string", "cosmos_key"})
_QUEUE_NAME = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class AzureOptions(QueueOptions):
    """What the Azure Storage Queue and the Cosmos DB stores read; ``visibility_timeout`` comes from
    ``QueueOptions``."""

    azure_storage_connection_string: str | None = option(
        None, "the storage account's connection string (Azurite: the devstoreaccount1 one)", secret=True)
    queue_name: str = option("flowcraft-queue", "the job queue (3-63 lowercase letters, digits, hyphens)")
    dead_letter_queue_name: str | None = option(None, "the dead-letter (poison) queue; default <queue>-dlq")
    max_dequeue_count: int = option(10, "receives without being handled (a worker died each time) before a "
                                        "message goes to the dead-letter queue")
    message_encoding: str = option("base64", "how a message's text holds the job's JSON: base64 (what Azure "
                                             "Functions and Storage Explorer expect) or json (plain text)")
    message_ttl_seconds: int = option(-1, "time to live of a message; -1 = never expires (needed for sleeps "
                                          "longer than Azure's 7-day default)")
    poll_interval: float = option(0.05, "first pause between empty receives (Azure queues have no long "
                                        "polling); it doubles up to max_poll_interval")
    max_poll_interval: float = option(1.0, "longest pause between empty receives")
    cosmos_endpoint: str | None = option(None, "the Cosmos DB account endpoint, e.g. "
                                               "https://myaccount.documents.azure.com:443/")
    cosmos_key: str | None = option(None, "the Cosmos DB account key (base64)", secret=True)
    cosmos_ca_cert: Path | None = option(  # noqa: RUF009  # option() is a dataclasses.field
        None, "a CA bundle to verify the Cosmos endpoint's certificate with (an emulator's); default the system's")
    cosmos_database: str = option("flowcraft", "the Cosmos DB database")
    context_container: str = option("flowcraft-contexts", "the container of run contexts (partition key /runId)")
    status_container: str = option("flowcraft-statuses", "the container of run records (partition key /runId)")
    cosmos_throughput: int | None = option(None, "RU/s provisioned on the database by setup (None: serverless "
                                                 "or set elsewhere)")
    cosmos_throttle_retries: int = option(9, "retries of a request Cosmos DB throttled (HTTP 429), each after "
                                             "the server's retry-after")
    cosmos_throttle_max_wait: float = option(30.0, "longest total wait for a throttled request, seconds")

    def __post_init__(self) -> None:
        if self.visibility_timeout < 1 or self.visibility_timeout > MAX_VISIBILITY_SECONDS:
            raise ConfigError(f"option visibility_timeout: must be between 1 and {MAX_VISIBILITY_SECONDS} seconds "
                              f"(Azure Storage Queue's limits), got {self.visibility_timeout:g}")
        if self.message_encoding not in ENCODINGS:
            raise ConfigError(f"option message_encoding: must be base64 or json, got {self.message_encoding!r}")
        for what, name in (("queue_name", self.queue_name), ("dead_letter_queue_name", self.dlq_name)):
            if not _QUEUE_NAME.match(name):
                raise ConfigError(f"option {what}: {name!r} is not a valid Azure queue name",
                                  hint="3-63 lowercase letters, digits and single hyphens, e.g. flowcraft-queue")
        if self.azure_storage_connection_string:
            check_connection_string(self.azure_storage_connection_string)
        if self.max_dequeue_count < 1:
            raise ConfigError(f"option max_dequeue_count: must be at least 1, got {self.max_dequeue_count}")
        if self.message_ttl_seconds != -1 and self.message_ttl_seconds < 1:
            raise ConfigError(f"option message_ttl_seconds: must be -1 or positive, got {self.message_ttl_seconds}")
        if not 0 < self.poll_interval <= self.max_poll_interval:
            raise ConfigError("options poll_interval and max_poll_interval: need 0 < poll_interval <= "
                              f"max_poll_interval, got {self.poll_interval:g} and {self.max_poll_interval:g}")
        if self.cosmos_throttle_retries < 0 or self.cosmos_throttle_max_wait < 0:
            raise ConfigError("options cosmos_throttle_retries and cosmos_throttle_max_wait must not be negative")

    def __repr__(self) -> str:
        """The options with the secrets masked (a repr may end up in a log)."""
        def show(name: str) -> str:
            value = getattr(self, name)
            return "***" if name in SECRET_OPTIONS and value else repr(value)

        return f"AzureOptions({', '.join(f'{f.name}={show(f.name)}' for f in fields(self))})"

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> AzureOptions:
        """The keys of ``options`` this backend declares, coerced to their types."""
        return parse_options(cls, options)

    @property
    def dlq_name(self) -> str:
        return self.dead_letter_queue_name or f"{self.queue_name}-dlq"

    def require_storage(self) -> str:
        if not self.azure_storage_connection_string:
            raise ConfigError("option azure_storage_connection_string is not set",
                              hint="set FLOWCRAFT_OPT_AZURE_STORAGE_CONNECTION_STRING (or -o "
                                   "azure_storage_connection_string=...) to the storage account's connection string")
        return self.azure_storage_connection_string

    def require_cosmos(self) -> tuple[str, str]:
        if not self.cosmos_endpoint or not self.cosmos_key:
            missing = "cosmos_endpoint" if not self.cosmos_endpoint else "cosmos_key"
            raise ConfigError(f"option {missing} is not set",
                              hint="set cosmos_endpoint and cosmos_key (FLOWCRAFT_OPT_COSMOS_ENDPOINT / "
                                   "FLOWCRAFT_OPT_COSMOS_KEY) to the Cosmos DB account's")
        return self.cosmos_endpoint, self.cosmos_key


def check_connection_string(text: str) -> None:
    """A one-line ConfigError (never echoing the string: it holds the account key) unless ``text`` looks like a
    storage connection string: ``key=value`` pairs separated by ``;`` naming a queue endpoint or an account."""
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            pairs = {}
            break
        pairs[key.strip().lower()] = value
    has_credential = "accountkey" in pairs or "sharedaccesssignature" in pairs
    if pairs.get("usedevelopmentstorage", "").lower() == "true" or "queueendpoint" in pairs or (
            "accountname" in pairs and has_credential):
        return
    raise ConfigError("option azure_storage_connection_string: not a storage connection string (expected "
                      "key=value pairs with AccountName and AccountKey, or QueueEndpoint)",
                      hint="copy it from the storage account's Access keys page, e.g. DefaultEndpointsProtocol=https;"
                           "AccountName=...;AccountKey=...;EndpointSuffix=core.windows.net")
