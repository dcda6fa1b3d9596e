"""The options of the ``rabbitmq`` backend's components (one flat mapping, see ``flowcraft.options``).

The queue reads :class:`RabbitMqOptions`, the PostgreSQL stores :class:`PostgresOptions`; the coordination
store is ``flowcraft_redis``'s and reads ``redis_url``, ``key_prefix`` and ``state_ttl_seconds``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowcraft.errors import ConfigError
from flowcraft.spi import QueueOptions, option, parse_options

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_POSTGRES_DSN = "postgresql://flowcraft@127.0.0.1:5432/flowcraft"
#: RabbitMQ's default ``max_message_size`` (128 MiB): a larger message is refused by the broker.
RABBITMQ_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
#: AMQP short strings (queue and exchange names) hold at most 255 bytes; the longest suffix is ".delay.NNNNNNNNN".
MAX_QUEUE_NAME_BYTES = 255 - len(".delay.000000000")
CONNECT_HELP = ("seconds for one connection attempt to RabbitMQ or PostgreSQL; a server never reached yet is "
                "tried this long before the one-line error")
RECONNECT_HELP = ("how long an operation keeps reconnecting (with backoff) after RabbitMQ or PostgreSQL went "
                  "away before it fails")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


@dataclass(frozen=True)
class RabbitMqOptions(QueueOptions):
    """The queue's options; ``visibility_timeout`` (from ``QueueOptions``) is how long a received job may go
    without a heartbeat before this process hands it back to the broker."""

    amqp_url: str = option(DEFAULT_AMQP_URL, "the RabbitMQ broker, amqp://user:password@host:5672/vhost "
                                             "(amqps:// for TLS; the password is masked wherever it is shown)")
    queue_name: str = option("flowcraft-jobs", "the job queue (quorum); setup also creates <queue>.dlx, "
                                               "<queue>.dlq and the delay queues <queue>.delay.<ms>")
    prefetch: int = option(0, "unacknowledged messages the broker pushes to one worker process; 0 = the "
                              "worker's concurrency")
    delivery_limit: int = option(20, "x-delivery-limit of the quorum queue: deliveries a message may be handed "
                                     "back (consumer died, visibility timer) before the broker dead-letters it")
    max_message_bytes: int = option(RABBITMQ_MAX_MESSAGE_BYTES, "largest job message; a larger one fails its run "
                                                                "(StoreLimitError). The broker's max_message_size "
                                                                "must be at least this")
    connect_timeout: float = option(10.0, CONNECT_HELP)
    reconnect_seconds: float = option(60.0, RECONNECT_HELP)
    continues: bool = option(True, "a finishing commit hands up to the worker's room of the jobs it fires straight "
                                   "to that worker, through a Redis set beside the coordination state instead of "
                                   "the broker (Capabilities.continues; one Redis only, not a Redis Cluster)")
    handover_visibility_timeout: float | None = option(
        None, "seconds a job handed over (continues) may go without a heartbeat before any worker's sweep puts it "
              "back on the queue (a dead worker's handed jobs come back after about this); default: "
              "visibility_timeout")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.handover_visibility_timeout is not None and not 0.1 <= self.handover_visibility_timeout <= 86400:
            raise ConfigError(f"option handover_visibility_timeout: must be between 0.1 and 86400 seconds (or unset: "
                              f"visibility_timeout), got {self.handover_visibility_timeout!r}")
        if not self.queue_name or len(self.queue_name.encode("utf-8")) > MAX_QUEUE_NAME_BYTES:
            raise ConfigError(f"option queue_name: must be 1 to {MAX_QUEUE_NAME_BYTES} bytes, got "
                              f"{self.queue_name!r}")
        if self.queue_name.startswith("amq."):
            raise ConfigError(f"option queue_name: names starting with 'amq.' are reserved by RabbitMQ, got "
                              f"{self.queue_name!r}")
        if self.prefetch < 0 or self.prefetch > 65535:
            raise ConfigError(f"option prefetch: must be between 0 and 65535, got {self.prefetch}")
        if self.delivery_limit < 1:
            raise ConfigError(f"option delivery_limit: must be at least 1, got {self.delivery_limit}")
        if not 1024 <= self.max_message_bytes <= 512 * 1024 * 1024:
            raise ConfigError(f"option max_message_bytes: must be between 1024 and 536870912 (RabbitMQ's "
                              f"ceiling), got {self.max_message_bytes}")
        if self.connect_timeout <= 0 or self.reconnect_seconds < 0:
            raise ConfigError("options connect_timeout and reconnect_seconds: must be positive numbers of seconds")

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> RabbitMqOptions:
        return parse_options(cls, options)

    @property
    def handed_visibility(self) -> float:
        """The visibility timeout of handed jobs (``handover_visibility_timeout``, else ``visibility_timeout``)."""
        return self.visibility_timeout if self.handover_visibility_timeout is None else self.handover_visibility_timeout


@dataclass(frozen=True)
class PostgresOptions:
    """The PostgreSQL stores' options (context and status)."""

    postgres_dsn: str = option(DEFAULT_POSTGRES_DSN, "the PostgreSQL server, postgresql://user:password@host:5432/db "
                                                     "or a key=value DSN (the password is masked wherever it "
                                                     "is shown)")
    context_table: str = option("flowcraft_contexts", "table of the runs' contexts, one row per (run_id, key)")
    status_table: str = option("flowcraft_statuses", "table of the run records")
    postgres_schema: str | None = option(None, "schema of both tables (default: the connection's search_path)")
    pool_min_size: int = option(1, "connections the pool keeps open")
    pool_max_size: int = option(10, "most connections the pool opens (per process)")
    connect_timeout: float = option(10.0, CONNECT_HELP)
    reconnect_seconds: float = option(60.0, RECONNECT_HELP)

    def __post_init__(self) -> None:
        for name in ("context_table", "status_table"):
            value = getattr(self, name)
            if not _TABLE_NAME.match(value):
                raise ConfigError(f"option {name}: must be a plain SQL identifier of at most 63 characters "
                                  f"(letters, digits, _ and $), got {value!r}")
        if self.postgres_schema is not None and not _TABLE_NAME.match(self.postgres_schema):
            raise ConfigError(f"option postgres_schema: must be a plain SQL identifier, got {self.postgres_schema!r}")
        if self.context_table == self.status_table:
            raise ConfigError("options context_table and status_table: must name two different tables")
        if not 0 <= self.pool_min_size <= self.pool_max_size or self.pool_max_size < 1:
            raise ConfigError(f"options pool_min_size/pool_max_size: need 0 <= min <= max and max >= 1, got "
                              f"{self.pool_min_size}/{self.pool_max_size}")
        if self.connect_timeout <= 0 or self.reconnect_seconds < 0:
            raise ConfigError("options connect_timeout and reconnect_seconds: must be positive numbers of seconds")

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> PostgresOptions:
        return parse_options(cls, options)
