"""dynalite (npm ``dynalite``, installed in ``.servers/node_modules``): the DynamoDB API on a free port.

Why it is here: moto's conditional writes are not atomic under concurrent requests (two writers can both
pass one condition), so code whose correctness rests on DynamoDB's conditions is tested on dynalite,
which serialises the writes to one item (a lock per item key around condition check and write).
DynamoDB only (SQS stays on moto); no TTL (``UpdateTimeToLive`` is unknown, ``DescribeTimeToLive`` says
``DISABLED``) and no transactions; GSIs, Query, BatchGetItem/BatchWriteItem and update expressions work.
A failed condition does not return the item (``ReturnValuesOnConditionCheckFailure`` is ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from .base import ServerNotInstalled, ServerOptions, servers_dir
from .moto import AwsEndpoint

# Never send loopback requests through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DynaliteServer(AwsEndpoint):
    """``node dynalite/cli.js --host 127.0.0.1 --port PORT`` in memory; tables are ACTIVE at once.

    Use region ``us-east-1`` and any key id/secret (``test``/``test``), as with moto.
    """

    name = "dynalite"
    install_name = "dynalite"
    poll_interval = 0.05

    def __init__(self, port: int | None = None, **kwargs: Unpack[ServerOptions]) -> None:
        super().__init__(port, **kwargs)
        self.node = os.environ.get("FLOWCRAFT_NODE") or shutil.which("node") or ""
        self.package_dir: Path = servers_dir() / "node_modules" / "dynalite"

    @property
    def version(self) -> str:
        """The installed dynalite's version (from its package.json)."""
        return str(json.loads((self.package_dir / "package.json").read_text())["version"])

    def check_installed(self) -> None:
        if not self.node:
            raise ServerNotInstalled("node", self.install_name)
        if not (self.package_dir / "cli.js").is_file():
            raise ServerNotInstalled(f"dynalite ({self.package_dir})", self.install_name)

    def command(self) -> Sequence[str]:
        return [
            self.node, str(self.package_dir / "cli.js"),
            "--host", self.host,
            "--port", str(self.port),
            "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        request = urllib.request.Request(
            self.endpoint_url,
            data=b"{}",
            headers={"X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0"},
            method="POST",
        )
        try:
            with _opener.open(request, timeout=2) as resp:
                return int(resp.status) < 500
        except urllib.error.HTTPError as exc:  # unsigned: refused, but the server answered
            return exc.code < 500
