"""Real servers for the integration tests: start on a free loopback port, wait, stop by PID.

    from servers import RedisServer
    with RedisServer(appendonly=True) as redis:
        ...  # redis.url

The pytest fixtures are in :mod:`servers.pytest_plugin`.
"""

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
from .moto import MotoServer
from .redis import RedisServer

__all__ = [
    "HOST",
    "MotoServer",
    "RedisServer",
    "Server",
    "ServerError",
    "ServerNotInstalled",
    "ServerOptions",
    "free_port",
    "free_ports",
    "port_open",
]
