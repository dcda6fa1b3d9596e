"""Generic management of a real server process for tests.

A :class:`Server` owns one subprocess bound to 127.0.0.1 on a free port, a private data directory
under a temporary directory, and a log file there. ``start()`` waits until the server answers
(``is_ready``), failing after ``startup_timeout`` seconds with an error that carries the tail of the
server's log. ``stop()`` stops it by PID: the stop signal (SIGTERM by default), a grace period, then
SIGKILL. Leftover processes in the server's own process group are killed as well.

Servers are started in their own session (so a Ctrl-C in the test runner does not reach them) and,
when started from the main thread, with a parent-death signal, so they go away even if the test
process is killed. Servers still running when the interpreter exits are stopped by an atexit hook.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypedDict

HOST = "127.0.0.1"

#: Repository root (tests-integration/servers/base.py -> ../..).
REPO_ROOT = Path(__file__).resolve().parents[2]

INSTALL_HINT = "run scripts/install-servers.sh"


class ServerError(RuntimeError):
    """A server failed to start or to stop."""


class ServerNotInstalled(ServerError):
    """The server's program is not installed on this machine."""

    def __init__(self, what: str, install_name: str) -> None:
        self.install_name = install_name
        super().__init__(f"{what} is not installed: {INSTALL_HINT} {install_name}")


class ServerOptions(TypedDict, total=False):
    """Keyword options every :class:`Server` accepts (for subclasses' ``**kwargs``)."""

    base_dir: str | os.PathLike[str] | None
    startup_timeout: float
    die_with_parent: bool


# --------------------------------------------------------------------------- helpers


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct free ports (all sockets held open while choosing)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def servers_dir() -> Path:
    """Where npm emulators are installed (``$FLOWCRAFT_SERVERS_DIR``, default ``<repo>/.servers``)."""
    return Path(os.environ.get("FLOWCRAFT_SERVERS_DIR") or REPO_ROOT / ".servers")


def venv_dirs() -> list[Path]:
    """Candidate virtualenvs holding Python-packaged servers, in order of preference.

    The running interpreter's environment first, then ``$VENV``, then ``<repo>/.venv``.
    """
    dirs = [Path(sys.prefix)]
    env_venv = os.environ.get("VENV")
    if env_venv:
        p = Path(env_venv)
        dirs.append(p if p.is_absolute() else REPO_ROOT / p)
    dirs.append(REPO_ROOT / ".venv")
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def find_venv_program(name: str) -> Path | None:
    """``<venv>/bin/<name>`` from the first candidate venv that has it, else ``$PATH``."""
    for venv in venv_dirs():
        exe = venv / "bin" / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    found = shutil.which(name)
    return Path(found) if found else None


def find_venv_package_dir(package: str) -> Path | None:
    """Directory of an installed top-level Python package, in the running or the project venv."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    for venv in venv_dirs():
        for site in sorted(venv.glob("lib/python3*/site-packages")):
            if (site / package / "__init__.py").is_file():
                return site / package
    return None


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-16384:]
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(log is empty)"


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# --------------------------------------------------------------------------- registry for atexit

_live: set[Server] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all_live() -> None:
    with _live_lock:
        live = list(_live)
    for server in live:
        with contextlib.suppress(Exception):
            server.stop()


# --------------------------------------------------------------------------- the base class


class Server:
    """One real server process. Subclasses define :meth:`command` and usually :meth:`is_ready`."""

    #: Short name used for temp dirs, log files and messages.
    name: str = "server"
    #: Name to pass to scripts/install-servers.sh when the program is missing.
    install_name: str = ""
    #: Signal that asks the server to shut down cleanly.
    stop_signal: signal.Signals = signal.SIGTERM
    #: Seconds to wait after ``stop_signal`` before SIGKILL.
    stop_timeout: float = 10.0
    #: Seconds between readiness probes.
    poll_interval: float = 0.02

    def __init__(
        self,
        port: int | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        self.host = HOST
        self.port = port if port is not None else free_port()
        self._own_base_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"flowcraft-{self.name}-")) if base_dir is None else Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.base_dir / f"{self.name}.log"
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        #: Wall-clock seconds the last ``start()`` took until the server was ready.
        self.startup_seconds: float | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._log_offset = 0

    # ---- to override -------------------------------------------------------------------

    def command(self) -> Sequence[str]:
        """argv of the server process (must run in the foreground)."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """Environment of the server process (None: inherit)."""
        return None

    def cwd(self) -> Path:
        return self.base_dir

    def popen_kwargs(self) -> dict[str, object]:
        """Extra keyword arguments for :class:`subprocess.Popen` (e.g. ``user``)."""
        return {}

    def check_installed(self) -> None:
        """Raise :class:`ServerNotInstalled` if the program is missing."""

    def prepare(self) -> None:
        """Create data directories, config files... Called once, before the first start."""

    def is_ready(self) -> bool:
        """True once the server serves requests. Default: its port accepts connections."""
        return port_open(self.port, self.host)

    def after_start(self) -> None:
        """Called once the server is ready (e.g. to create a database)."""

    def before_stop(self) -> None:
        """Called before the stop signal is sent (e.g. to stop via the server's own tool)."""

    # ---- lifecycle -------------------------------------------------------------------------

    def log_since_start(self) -> str:
        """What the server wrote to its log since the last ``start()``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None and not _exited(self.process.pid)

    def start(self) -> Self:
        """Start the server and wait until it is ready. Returns self."""
        if self.running:
            raise ServerError(f"{self.name} is already running (pid {self.pid})")
        self.check_installed()
        t0 = time.perf_counter()
        if not self._prepared:
            self.prepare()
            self._prepared = True
        argv = list(self.command())
        main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd(),
                env=self.environment(),
                start_new_session=True,
                preexec_fn=_die_with_parent if (self.die_with_parent and main_thread) else None,
                **self.popen_kwargs(),
            )
        with _live_lock:
            _live.add(self)
        try:
            self._wait_ready(t0)
            self.after_start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        assert self.process is not None
        deadline = t0 + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"{self.name} exited with code {code} during startup "
                    f"(port {self.port}, log {self.log_path}):\n{log_tail(self.log_path)}"
                )
            try:
                if self.is_ready():
                    return
            except Exception:  # a probe that fails just means "not ready yet"
                pass
            if time.perf_counter() > deadline:
                raise ServerError(
                    f"{self.name} (pid {self.process.pid}) not ready on {self.host}:{self.port} "
                    f"after {self.startup_timeout:.0f}s (log {self.log_path}):\n{log_tail(self.log_path)}"
                )
            time.sleep(self.poll_interval)

    def stop(self) -> None:
        """Stop the server by PID (stop signal, wait, SIGKILL). Safe to call twice."""
        self._stop(report_death=True)

    def _stop(self, report_death: bool) -> None:
        proc = self.process
        if proc is None:
            return
        if report_death and proc.returncode is None and _exited(proc.pid):  # died unasked (not at startup): say how
            warnings.warn(f"{self.name} (pid {proc.pid}, port {self.port}) had exited before it was stopped; the "
                          f"end of its log:\n{log_tail(self.log_path)}", RuntimeWarning, stacklevel=2)
        try:
            if proc.returncode is None and not _exited(proc.pid):
                with contextlib.suppress(Exception):
                    self.before_stop()
            if proc.returncode is None and not _exited(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signal)
                if not _exited(proc.pid, self.stop_timeout):
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    _exited(proc.pid, 10)
            if proc.returncode is None:
                # Children left behind in the server's own process group (its pgid is its pid), killed while
                # the leader is an unreaped zombie: until it is reaped its pid cannot be handed to a new
                # process, so the signal cannot reach another server that got the number (pid_max wraps).
                self._kill_group(proc.pid)
            proc.wait(10)
        finally:
            self.process = None
            with _live_lock:
                _live.discard(self)

    def _kill_group(self, pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if _group_is_only(pgid):
                    return
                time.sleep(0.05)
            os.killpg(pgid, signal.SIGKILL)

    def restart(self, crash: bool = False) -> Self:
        """Stop and start again on the same port with the same data directory.

        ``crash=True`` kills the server with SIGKILL instead of asking it to shut down.
        """
        if crash and self.process is not None and not _exited(self.process.pid):
            with contextlib.suppress(ProcessLookupError):  # the server and its children, as a crash takes them
                os.killpg(self.process.pid, signal.SIGKILL)
            _exited(self.process.pid, 10)
        self._stop(report_death=not crash)
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its temporary directory (if this object created it)."""
        self.stop()
        if self._own_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


def _exited(pid: int, timeout: float = 0.0) -> bool:
    """Whether child ``pid`` has exited, waiting up to ``timeout`` seconds, without reaping it (``WNOWAIT``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _group_is_only(pgid: int) -> bool:
    """Whether nothing but the (zombie) leader is left in process group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return False
    return True
