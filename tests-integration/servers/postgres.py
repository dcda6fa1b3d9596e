"""A throw-away PostgreSQL cluster (Debian ``postgresql``) on a free loopback port."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from .base import Server, ServerError, ServerNotInstalled, ServerOptions


def find_pg_bindir() -> Path | None:
    """``$FLOWCRAFT_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``, else ``initdb`` on PATH."""
    env = os.environ.get("FLOWCRAFT_PG_BIN")
    if env:
        return Path(env)

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return 0.0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class PostgresServer(Server):
    """``postgres`` in the foreground on a fresh cluster made by ``initdb``; durability off for speed.

    The server refuses to run as root, so when the tests run as root it runs as the OS user
    ``postgres`` (which owns the temporary directory). One superuser role and one database, both
    named ``flowcraft`` (password ``flowcraft``): see :attr:`url`. Stopped with SIGINT (fast shutdown:
    open client connections do not delay it).
    """

    name = "postgres"
    install_name = "postgres"
    stop_signal = signal.SIGINT
    poll_interval = 0.05

    user = "flowcraft"
    password = "flowcraft"
    database = "flowcraft"

    def __init__(
        self,
        port: int | None = None,
        *,
        settings: dict[str, str] | None = None,
        **kwargs: Unpack[ServerOptions],
    ) -> None:
        super().__init__(port, **kwargs)
        self.bindir = find_pg_bindir()
        self.data_dir = self.base_dir / "pgdata"
        self.socket_dir = self.base_dir / "sock"
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
            **(settings or {}),
        }
        self._os_user: str | None = None
        if os.geteuid() == 0:
            self._os_user = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def check_installed(self) -> None:
        if self.bindir is None or not (self.bindir / "initdb").exists():
            raise ServerNotInstalled("PostgreSQL (initdb/postgres)", self.install_name)
        if self._os_user is not None:
            try:
                pwd.getpwnam(self._os_user)
            except KeyError:
                raise ServerNotInstalled(f"the OS user {self._os_user!r}", self.install_name) from None

    def popen_kwargs(self) -> dict[str, object]:
        return {"user": self._os_user} if self._os_user else {}

    def _run(self, argv: Sequence[str], what: str) -> None:
        proc = subprocess.run(
            list(argv),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            user=self._os_user,
        )
        if proc.returncode != 0:
            raise ServerError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")

    def prepare(self) -> None:
        assert self.bindir is not None
        self.data_dir.mkdir(mode=0o700)
        self.socket_dir.mkdir()
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._os_user is not None:
            info = pwd.getpwnam(self._os_user)
            for path in (self.base_dir, self.data_dir, self.socket_dir, pwfile, self.log_path):
                if path.exists():
                    os.chown(path, info.pw_uid, info.pw_gid)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.user,
                f"--pwfile={pwfile}",
                "-E", "UTF8",
                "--locale=C.UTF-8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )  # fmt: skip
        pwfile.unlink()

    def command(self) -> Sequence[str]:
        assert self.bindir is not None
        argv = [
            str(self.bindir / "postgres"),
            "-D", str(self.data_dir),
            "-c", f"listen_addresses={self.host}",
            "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}",
        ]  # fmt: skip
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def is_ready(self) -> bool:
        return "database system is ready to accept connections" in self.log_since_start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; returns psql's unaligned output."""
        assert self.bindir is not None
        psql = self.bindir / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or "psql")
        argv = [str(psql), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir)]
        argv += ["-p", str(self.port), "-U", self.user, "-d", database, "-c", sql]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise ServerError(f"psql failed (exit {proc.returncode}): {sql}\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def after_start(self) -> None:
        # On a restart the database already exists.
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'").strip() != "1":
            self.psql(f"CREATE DATABASE {self.database}")
