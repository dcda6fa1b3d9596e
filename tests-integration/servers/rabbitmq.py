"""A private RabbitMQ node (Debian ``rabbitmq-server``) on a free loopback port, without systemd."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Self, Unpack

from .base import Server, ServerNotInstalled, ServerOptions, free_ports, port_open

RABBITMQ_BIN = Path(os.environ.get("FLOWCRAFT_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


class EpmdServer(Server):
    """A private Erlang port mapper (``epmd``) so the node does not touch the system-wide one."""

    name = "epmd"
    install_name = "rabbitmq"

    def __init__(self, port: int | None = None, **kwargs: Unpack[ServerOptions]) -> None:
        super().__init__(port, **kwargs)
        self.binary = shutil.which("epmd") or ""

    def check_installed(self) -> None:
        if not self.binary:
            raise ServerNotInstalled("epmd (Erlang)", self.install_name)

    def command(self) -> Sequence[str]:
        return [self.binary, "-port", str(self.port), "-address", self.host]


class RabbitMqServer(Server):
    """RabbitMQ run as the current user via ``/usr/lib/rabbitmq/bin/rabbitmq-server`` (not the
    ``/usr/sbin`` wrapper, which switches user and uses /var/lib/rabbitmq).

    Everything is private: AMQP on :attr:`port`, Erlang distribution and epmd on two more free
    loopback ports, state under the temporary directory (kept across :meth:`restart`, so durable
    queues and persistent messages survive it). User ``guest``/``guest``, vhost ``/``: see :attr:`url`.
    """

    name = "rabbitmq"
    install_name = "rabbitmq"
    poll_interval = 0.1
    stop_timeout = 30.0

    def __init__(self, port: int | None = None, **kwargs: Unpack[ServerOptions]) -> None:
        kwargs.setdefault("startup_timeout", 60.0)
        super().__init__(port, **kwargs)
        self.dist_port, epmd_port = free_ports(2)
        self.node_name = f"flowcraft{self.port}@localhost"
        self.rabbit_dir = self.base_dir / "rabbitmq"
        self.epmd = EpmdServer(epmd_port, base_dir=self.base_dir / "epmd", die_with_parent=self.die_with_parent)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def check_installed(self) -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise ServerNotInstalled("rabbitmq-server", self.install_name)
        self.epmd.check_installed()

    def prepare(self) -> None:
        d = self.rabbit_dir
        for sub in ("mnesia", "log", "etc"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "etc" / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            "disk_free_limit.absolute = 50MB\n"
            "log.console = true\n"
            "log.console.level = info\n"
            "log.file = false\n"
        )
        (d / "etc" / "advanced.config").write_text("[].\n")
        (d / "etc" / "enabled_plugins").write_text("[].\n")
        (d / "etc" / "rabbitmq-env.conf").write_text("")  # ignore /etc/rabbitmq/rabbitmq-env.conf

    def environment(self) -> dict[str, str]:
        d = self.rabbit_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                "HOME": str(d),  # .erlang.cookie lives here
                "RABBITMQ_BASE": str(d),
                "RABBITMQ_NODENAME": self.node_name,
                "RABBITMQ_NODE_IP_ADDRESS": self.host,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd.port),
                "ERL_EPMD_ADDRESS": self.host,
                "RABBITMQ_CONF_ENV_FILE": str(d / "etc" / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(d / "etc" / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "etc" / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "etc" / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
                ),
                "PATH": f"{RABBITMQ_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            }
        )
        return env

    def command(self) -> Sequence[str]:
        return [str(RABBITMQ_BIN / "rabbitmq-server")]

    def is_ready(self) -> bool:
        return port_open(self.port, self.host)

    def start(self) -> Self:
        if not self.epmd.running:
            self.epmd.check_installed()
            self.epmd.start()
        try:
            return super().start()
        except BaseException:
            self.epmd.stop()
            raise

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.epmd.stop()
