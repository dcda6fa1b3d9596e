"""The options of the ``kafka`` backend's components (one flat mapping; see the package README)."""

from __future__ import annotations

from dataclasses import dataclass

from flowcraft.errors import ConfigError
from flowcraft.spi import QueueOptions, option
from flowcraft_redis.options import RedisOptions

#: the consistency levels accepted by ``consistency`` (cassandra-driver's names)
CONSISTENCY_LEVELS = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")


def _positive(name: str, value: float, hint: str) -> None:
    if value <= 0:
        raise ConfigError(f"option {name}: must be positive, got {value}", hint=hint)


@dataclass(frozen=True)
class KafkaOptions(QueueOptions):
    """The Kafka queue (``visibility_timeout`` from ``QueueOptions``: how long a record handed to a worker
    stays in its hands without a heartbeat before the consumer hands it out again)."""

    bootstrap_servers: str = option("127.0.0.1:9092", "Kafka brokers, comma-separated host:port")
    topic_name: str = option("flowcraft-jobs", "the jobs topic")
    delay_topic_name: str | None = option(None, "the delay topic (backoff, sleeps); default <topic_name>-delay")
    dead_letter_topic_name: str | None = option(None, "the dead-letter topic; default <topic_name>-dlq")
    group_id: str = option("flowcraft-workers", "consumer group of the workers (the delay forwarder uses "
                                                "<group_id>-delay)")
    partitions: int = option(6, "partitions of the topics `flowcraft setup` creates (the parallelism of a group)")
    replication_factor: int = option(1, "replication factor of the topics `flowcraft setup` creates")
    session_timeout_ms: int = option(10000, "consumer session timeout: a dead worker's partitions move after it "
                                            "(Tansu: a group join takes about half of it)")
    max_buffered: int = option(200, "records fetched ahead of the workers; the consumer pauses its partitions "
                                    "beyond it")
    max_delayed_in_memory: int = option(100000, "delayed records a forwarder holds at once; beyond it the "
                                                "delay topic is paused (those records come later, never lost)")
    fetch_wait_max_ms: int = option(100, "longest a fetch waits on the broker for new records (librdkafka "
                                         "fetch.wait.max.ms): bounds a job's pickup latency on brokers that do "
                                         "not answer a fetch as soon as a record arrives")
    commit_interval_ms: int = option(100, "how often finished offsets are committed")
    max_message_bytes: int = option(1000000, "largest job record (the broker's message.max.bytes)")
    connect_timeout: float = option(10.0, "seconds to reach the brokers before reporting them unreachable")
    security_protocol: str | None = option(None, "librdkafka security.protocol (e.g. SASL_SSL)")
    sasl_mechanism: str | None = option(None, "librdkafka sasl.mechanism (e.g. PLAIN, SCRAM-SHA-512)")
    sasl_username: str | None = option(None, "SASL user name")
    sasl_password: str | None = option(None, "SASL password", secret=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("partitions", "replication_factor", "session_timeout_ms", "max_buffered",
                     "max_delayed_in_memory", "fetch_wait_max_ms", "commit_interval_ms", "max_message_bytes",
                     "connect_timeout"):
            _positive(name, getattr(self, name), "see `flowcraft backends --options kafka`")
        if not self.bootstrap_servers.strip():
            raise ConfigError("option bootstrap_servers: empty", hint="e.g. 127.0.0.1:9092")

    @property
    def delay_topic(self) -> str:
        return self.delay_topic_name or f"{self.topic_name}-delay"

    @property
    def dead_letter_topic(self) -> str:
        return self.dead_letter_topic_name or f"{self.topic_name}-dlq"


@dataclass(frozen=True)
class CassandraOptions:
    """Where the context and status tables live."""

    cassandra_hosts: str = option("127.0.0.1", "Cassandra contact points, comma-separated host or host:port")
    cassandra_port: int = option(9042, "native protocol port of contact points given without one")
    keyspace: str = option("flowcraft", "keyspace of the tables (`flowcraft setup` creates it)")
    context_table_name: str = option("flowcraft_contexts", "context table: one row per (run_id, key)")
    status_table_name: str = option("flowcraft_statuses", "status table (its lookup tables are "
                                                          "<name>_by_status and <name>_by_created)")
    protocol_version: int = option(0, "native protocol version; 0 lets the driver negotiate (Cassandra 1.2: 1)")
    consistency: str = option("LOCAL_QUORUM", "consistency level of every statement (Cassandra 1.2: ONE)")
    cassandra_replication_factor: int = option(1, "replication factor of the keyspace `flowcraft setup` creates "
                                                  "(SimpleStrategy; create it yourself for "
                                                  "NetworkTopologyStrategy)")
    cassandra_username: str | None = option(None, "Cassandra user (PlainTextAuthProvider)")
    cassandra_password: str | None = option(None, "Cassandra password", secret=True)
    status_buckets: int = option(8, "partitions per status of the status lookup tables (spreads hot partitions; "
                                    "the reconciler reads each)")
    max_value_bytes: int = option(1000000, "largest context value or run record, UTF-8 JSON")
    request_timeout: float = option(30.0, "seconds one Cassandra request may take")

    def __post_init__(self) -> None:
        if self.consistency.upper() not in CONSISTENCY_LEVELS:
            raise ConfigError(f"option consistency: unknown level {self.consistency!r}",
                              hint="one of " + ", ".join(CONSISTENCY_LEVELS))
        if self.protocol_version < 0 or self.protocol_version > 6:
            raise ConfigError(f"option protocol_version: must be 0 (negotiate) to 6, got {self.protocol_version}",
                              hint="1 for Cassandra 1.2, 4 for Cassandra 3/4")
        if not self.keyspace.replace("_", "").isalnum() or len(self.keyspace) > 48:
            raise ConfigError(f"option keyspace: {self.keyspace!r} is not a Cassandra name",
                              hint="letters, digits and _, at most 48 characters")
        for name in ("context_table_name", "status_table_name"):
            value = getattr(self, name)
            if not value.replace("_", "").isalnum() or len(value) > 36:
                raise ConfigError(f"option {name}: {value!r} is not a Cassandra table name",
                                  hint="letters, digits and _, at most 36 characters")
        for name in ("status_buckets", "max_value_bytes", "cassandra_replication_factor", "request_timeout"):
            _positive(name, getattr(self, name), "see `flowcraft backends --options kafka`")


@dataclass(frozen=True)
class StatusOptions(CassandraOptions, RedisOptions):
    """The status store: records in Cassandra, compare-and-set decisions in Redis."""
