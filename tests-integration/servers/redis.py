"""Redis (Debian ``redis-server``) in the foreground on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Sequence
from typing import Unpack

from .base import Server, ServerNotInstalled, ServerOptions


class RedisServer(Server):
    """``redis-server`` bound to 127.0.0.1.

    By default nothing is persisted (no RDB snapshots, no AOF). With ``appendonly=True`` every write
    goes to an append-only file in the data directory, so :meth:`restart` (same port, same data
    directory) brings the data back, e.g. to test "Redis restarted mid-run keeps runs".
    ``restart(crash=True)`` kills the server with SIGKILL instead of a clean shutdown.
    """

    name = "redis"
    install_name = "redis"
    stop_timeout = 10.0
    poll_interval = 0.005

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        maxmemory: str = "512mb",
        extra_args: Sequence[str] = (),
        **kwargs: Unpack[ServerOptions],
    ) -> None:
        super().__init__(port, **kwargs)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.extra_args = list(extra_args)
        self.data_dir = self.base_dir / "data"
        self.binary = os.environ.get("FLOWCRAFT_REDIS_SERVER") or shutil.which("redis-server") or ""

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def check_installed(self) -> None:
        if not self.binary:
            raise ServerNotInstalled("redis-server", self.install_name)

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> Sequence[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", "",  # stdout, captured in the log file
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "noeviction",
            *self.extra_args,
        ]  # fmt: skip

    def is_ready(self) -> bool:
        # PONG, not -LOADING (an AOF being replayed after a restart).
        with socket.create_connection((self.host, self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
