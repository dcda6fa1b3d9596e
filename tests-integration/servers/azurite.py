"""Azurite's queue service (npm ``azurite``, installed in ``.servers/node_modules``) on a free port."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from .base import Server, ServerNotInstalled, ServerOptions, servers_dir

#: Azurite's well-known development account and its public key.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def queue_connection_string(endpoint: str) -> str:
    """Connection string for the development account at ``endpoint`` (``http://host:port``)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"QueueEndpoint={endpoint.rstrip('/')}/{ACCOUNT_NAME};"
    )


class AzuriteServer(Server):
    """``node azurite/dist/src/queue/main.js`` with ``--skipApiVersionCheck --loose``.

    In memory by default; ``in_memory=False`` keeps data in the temporary directory, so it survives
    :meth:`restart`.
    """

    name = "azurite"
    install_name = "azurite"
    poll_interval = 0.05

    def __init__(
        self,
        port: int | None = None,
        *,
        in_memory: bool = True,
        **kwargs: Unpack[ServerOptions],
    ) -> None:
        super().__init__(port, **kwargs)
        self.in_memory = in_memory
        self.node = os.environ.get("FLOWCRAFT_NODE") or shutil.which("node") or ""
        self.main_js: Path = servers_dir() / "node_modules" / "azurite" / "dist" / "src" / "queue" / "main.js"
        self.data_dir = self.base_dir / "azurite"

    @property
    def queue_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return queue_connection_string(f"http://{self.host}:{self.port}")

    def check_installed(self) -> None:
        if not self.node:
            raise ServerNotInstalled("node", self.install_name)
        if not self.main_js.is_file():
            raise ServerNotInstalled(f"azurite ({self.main_js})", self.install_name)

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> Sequence[str]:
        storage = ["--inMemoryPersistence"] if self.in_memory else ["--location", str(self.data_dir)]
        return [
            self.node, str(self.main_js),
            "--queueHost", self.host,
            "--queuePort", str(self.port),
            *storage,
            "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent",
        ]  # fmt: skip
