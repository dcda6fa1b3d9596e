"""moto's standalone server (SQS + DynamoDB, in memory) on a free loopback port."""

from __future__ import annotations

import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from .base import Server, ServerNotInstalled, ServerOptions, find_venv_program

REGION = "us-east-1"
ACCESS_KEY_ID = "test"
SECRET_ACCESS_KEY = "test"

# Never send loopback requests through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AwsEndpoint(Server):
    """A server speaking an AWS API over plain HTTP, with region ``us-east-1`` and keys ``test``/``test``."""

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client(service, **kwargs)`` / aiobotocore."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": REGION,
            "aws_access_key_id": ACCESS_KEY_ID,
            "aws_secret_access_key": SECRET_ACCESS_KEY,
        }


class MotoServer(AwsEndpoint):
    """``<venv>/bin/moto_server -H 127.0.0.1 -p PORT``; all AWS services on one endpoint.

    Use region ``us-east-1`` and any key id/secret (``test``/``test``). :meth:`reset` clears all state.
    """

    name = "moto"
    install_name = "moto"
    poll_interval = 0.05

    def __init__(self, port: int | None = None, **kwargs: Unpack[ServerOptions]) -> None:
        super().__init__(port, **kwargs)
        self.binary: Path | None = find_venv_program("moto_server")

    def check_installed(self) -> None:
        if self.binary is None:
            raise ServerNotInstalled("moto_server (moto[sqs,dynamodb] flask flask-cors)", self.install_name)

    def command(self) -> Sequence[str]:
        assert self.binary is not None
        return [str(self.binary), "-H", self.host, "-p", str(self.port)]

    def is_ready(self) -> bool:
        with _opener.open(f"{self.endpoint_url}/moto-api/", timeout=2) as resp:
            return int(resp.status) == 200

    def reset(self) -> None:
        """Delete every queue, table, ... (``POST /moto-api/reset``)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST")
        with _opener.open(req, timeout=10) as resp:
            resp.read()
