"""A Redis Cluster of ``shards`` primaries (no replicas): ``redis-server --cluster-enabled yes`` processes on
free loopback ports, joined by ``redis-cli --cluster create``. Each node is a ``RedisServer`` of its own (started
and stopped by PID); this object is the first node and owns the others."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any, Unpack

from .base import ServerError, ServerNotInstalled, ServerOptions, free_ports
from .redis import RedisServer


def _cluster_args(node: RedisServer, bus_port: int) -> list[str]:
    # the bus port is given (not the default port + 10000, which may be taken or above 65535)
    return ["--cluster-enabled", "yes", "--cluster-config-file", str(node.data_dir / "nodes.conf"),
            "--cluster-port", str(bus_port), "--cluster-node-timeout", "5000",
            "--cluster-require-full-coverage", "yes"]


def _complete(reply: bytes) -> bool:
    """Whether ``reply`` is a whole RESP reply to ``CLUSTER INFO``/``PING``: a bulk string (``$<n>\\r\\n`` and n
    bytes and ``\\r\\n``) or a one-line reply."""
    head, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return False
    if head.startswith(b"$") and head[1:].isdigit():
        return len(rest) >= int(head[1:]) + 2
    return True


class _ClusterNode(RedisServer):
    name = "redis-cluster-node"

    def __init__(self, port: int, bus_port: int, **kwargs: Any) -> None:
        super().__init__(port, **kwargs)
        self.bus_port = bus_port

    def command(self) -> Sequence[str]:
        return [*super().command(), *_cluster_args(self, self.bus_port)]


class RedisClusterServer(RedisServer):
    """A ``shards``-primary Redis Cluster; ``url`` is ``redis+cluster://127.0.0.1:<first node's port>``
    (what ``flowcraft_redis.make_client`` reads as a cluster), ``ports`` every node's port."""

    name = "redis-cluster"
    startup_timeout_cluster = 30.0

    def __init__(self, shards: int = 3, *, maxmemory: str = "256mb", **kwargs: Unpack[ServerOptions]) -> None:
        if shards < 1:
            raise ValueError("a Redis Cluster needs at least one primary")
        ports = free_ports(2 * shards)  # a client port and a cluster bus port per node
        super().__init__(ports[0], maxmemory=maxmemory, **kwargs)
        self.bus_port = ports[shards]
        self.others = [_ClusterNode(ports[i], ports[shards + i], maxmemory=maxmemory,
                                    base_dir=self.base_dir / f"node{i}") for i in range(1, shards)]
        self.cli = shutil.which("redis-cli") or ""

    @property
    def ports(self) -> list[int]:
        return [self.port, *(node.port for node in self.others)]

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.host}:{self.port}"

    @property
    def node_urls(self) -> list[str]:
        """Plain ``redis://`` URLs of the nodes (to read ``INFO`` of each shard)."""
        return [f"redis://{self.host}:{port}/0" for port in self.ports]

    def check_installed(self) -> None:
        super().check_installed()
        if not self.cli:
            raise ServerNotInstalled("redis-cli", self.install_name)

    def command(self) -> Sequence[str]:
        return [*super().command(), *_cluster_args(self, self.bus_port)]

    def after_start(self) -> None:
        try:
            for node in self.others:
                node.start()
            if len(self.ports) >= 3:
                create = subprocess.run(
                    [self.cli, "--cluster", "create", *(f"{self.host}:{port}" for port in self.ports),
                     "--cluster-replicas", "0", "--cluster-yes"],
                    capture_output=True, timeout=60, check=False)
                if create.returncode != 0:
                    raise ServerError(f"redis-cli --cluster create failed: {create.stdout[-2000:]!r} "
                                      f"{create.stderr[-2000:]!r}")
            else:
                self._create_by_hand()
            self._wait_cluster_ok()
        except BaseException:
            for node in self.others:
                node.stop()
            raise

    def _create_by_hand(self) -> None:
        """1 or 2 primaries (``redis-cli --cluster create`` wants 3): each node given its even contiguous share
        of the slots (``CLUSTER ADDSLOTSRANGE``), as ``--cluster create`` splits them, and introduced to the
        first (``CLUSTER MEET``)."""
        n = len(self.ports)
        for i, port in enumerate(self.ports):
            lo, hi = i * 16384 // n, (i + 1) * 16384 // n - 1
            reply = self._info(port, b"CLUSTER ADDSLOTSRANGE %d %d" % (lo, hi))
            if not reply.startswith(b"+OK"):
                raise ServerError(f"CLUSTER ADDSLOTSRANGE on port {port} failed: {reply[:200]!r}")
        for node in self.others:
            reply = self._info(self.port, b"CLUSTER MEET %s %d %d" % (self.host.encode(), node.port, node.bus_port))
            if not reply.startswith(b"+OK"):
                raise ServerError(f"CLUSTER MEET of port {node.port} failed: {reply[:200]!r}")

    def _wait_cluster_ok(self) -> None:
        """Until every node has said, three times in a row 0.1 s apart, that the cluster is ok, every slot is
        served and it knows every node (one ok right after ``--cluster create`` was seen followed by a
        ``CLUSTERDOWN`` reply to the first command)."""
        deadline = time.monotonic() + self.startup_timeout_cluster
        wanted = (b"cluster_state:ok", b"cluster_slots_ok:16384", b"cluster_known_nodes:%d" % len(self.ports))
        streak = 0
        while True:
            infos = [self._info(port, b"CLUSTER INFO") for port in self.ports]
            streak = streak + 1 if all(w in info for info in infos for w in wanted) else 0
            if streak >= 3:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"redis cluster on ports {self.ports} not ok after "
                                  f"{self.startup_timeout_cluster:.0f}s")
            time.sleep(0.1)

    def _info(self, port: int, command: bytes) -> bytes:
        with socket.create_connection((self.host, port), timeout=2) as s:
            s.sendall(b"*%d\r\n" % len(command.split()) + b"".join(
                b"$%d\r\n%s\r\n" % (len(part), part) for part in command.split()))
            data = b""
            s.settimeout(2)
            while not _complete(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    def stop(self) -> None:
        try:
            for node in self.others:
                node.stop()
        finally:
            super().stop()

    def close(self) -> None:
        for node in self.others:
            node.close()
        super().close()

    def restart(self, crash: bool = False) -> RedisClusterServer:
        raise ServerError("a RedisClusterServer is not restarted (its nodes would need the cluster rejoined)")
