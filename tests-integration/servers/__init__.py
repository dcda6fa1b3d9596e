"""Real servers for the integration tests: start on a free loopback port, wait, stop by PID.

    from servers import RedisServer
    with RedisServer(appendonly=True) as redis:
        ...  # redis.url

The pytest fixtures are in :mod:`servers.pytest_plugin`.
"""

from .azurite import AzuriteServer
from .base import (
    HOST,
    Server,
    ServerError,
    ServerNotInstalled,
    ServerOptions,
    free_port,
    free_ports,
    port_open,
)
from .cassandra import CassandraServer
from .cosmos import CosmosServer
from .dynalite import DynaliteServer
from .kafka import KafkaServer
from .moto import MotoServer
from .postgres import PostgresServer
from .rabbitmq import RabbitMqServer
from .redis import RedisServer
from .redis_cluster import RedisClusterServer

__all__ = [
    "HOST",
    "AzuriteServer",
    "CassandraServer",
    "CosmosServer",
    "DynaliteServer",
    "KafkaServer",
    "MotoServer",
    "PostgresServer",
    "RabbitMqServer",
    "RedisClusterServer",
    "RedisServer",
    "Server",
    "ServerError",
    "ServerNotInstalled",
    "ServerOptions",
    "free_port",
    "free_ports",
    "port_open",
]
