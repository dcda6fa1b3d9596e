"""Cosmos DB SQL API emulator (npm ``@vercel/cosmosdb-server``) over HTTPS on a free loopback port.

A private CA and a server certificate for 127.0.0.1/localhost are generated at start with the
``cryptography`` package (:attr:`CosmosServer.ca_cert_path` is the CA bundle for clients), and
``cosmos-server.js`` next to this file wraps the emulator (keep-alive, 404 for missing documents).
Known gaps of the emulator: no item TTL, no transactional batch.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from .base import Server, ServerNotInstalled, ServerOptions, servers_dir

#: The public key of the Cosmos DB emulator (the emulator accepts any key; the SDK wants base64).
EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="

WRAPPER_JS = Path(__file__).with_name("cosmos-server.js")


def write_test_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` (server cert for 127.0.0.1 and localhost)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowcraft test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class CosmosServer(Server):
    """``node cosmos-server.js PORT cert key`` with ``NODE_PATH`` at ``.servers/node_modules``."""

    name = "cosmos"
    install_name = "cosmos"
    poll_interval = 0.02

    def __init__(
        self,
        port: int | None = None,
        *,
        tls: bool = True,
        **kwargs: Unpack[ServerOptions],
    ) -> None:
        super().__init__(port, **kwargs)
        self.tls = tls
        self.node = os.environ.get("FLOWCRAFT_NODE") or shutil.which("node") or ""
        self.node_modules = servers_dir() / "node_modules"
        self.tls_dir = self.base_dir / "tls"
        self.ca_cert_path = self.tls_dir / "ca.pem"
        self.cert_path = self.tls_dir / "cert.pem"
        self.key_path = self.tls_dir / "key.pem"
        self.key = EMULATOR_KEY

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    def check_installed(self) -> None:
        if not self.node:
            raise ServerNotInstalled("node", self.install_name)
        if not (self.node_modules / "@vercel" / "cosmosdb-server" / "package.json").is_file():
            raise ServerNotInstalled(f"@vercel/cosmosdb-server (in {self.node_modules})", self.install_name)
        if self.tls:
            try:
                import cryptography  # noqa: F401
            except ImportError:
                raise ServerNotInstalled("the Python package cryptography", self.install_name) from None

    def prepare(self) -> None:
        if self.tls:
            write_test_certificates(self.tls_dir)

    def environment(self) -> dict[str, str]:
        return {**os.environ, "NODE_PATH": str(self.node_modules)}

    def command(self) -> Sequence[str]:
        argv = [self.node, str(WRAPPER_JS), str(self.port), str(self.cert_path), str(self.key_path)]
        return argv if self.tls else [*argv, "--no-ssl"]

    def is_ready(self) -> bool:
        return "Ready to accept" in self.log_since_start()
