"""Health endpoints and a ready file for ``flowcraft worker`` (supervisors, Kubernetes probes).

The HTTP server is the standard library's ``ThreadingHTTPServer`` in a daemon thread (no web framework is a
dependency of flowcraft-core): it only reads a snapshot the worker's event loop refreshes every second, so a
probe never touches the stores and never waits on the event loop.

* ``GET /healthz`` (liveness): 200 while the worker's event loop is responsive (its snapshot was refreshed in
  the last ``STALE_SECONDS``), 503 otherwise (the loop is blocked: restart the process).
* ``GET /readyz`` (readiness): 200 once the worker reached its stores and is consuming, until it starts
  stopping; 503 before and after.

Both answer a small JSON document: ``{"status", "worker_id", "state", "in_flight", "handled", "failed"}``.

With ``flowcraft worker --processes N`` the supervisor serves them for the fleet (``FleetHealth``): ready while
all N worker processes run and each has said it is ready; the answer adds ``processes_ready`` and ``processes``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flowcraft.errors import ConfigError

STALE_SECONDS = 30.0  # a snapshot older than this means the event loop is stuck: /healthz says 503


@dataclass(slots=True)
class HealthState:
    """What the probes report; written by the worker's event loop, read by the server thread."""

    worker_id: str
    state: str = "starting"
    in_flight: int = 0
    handled: int = 0
    failed: int = 0
    refreshed: float = field(default_factory=time.monotonic)
    #: for a supervisor (``--processes``): (worker processes ready, processes wanted)
    processes: tuple[int, int] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, state: str, in_flight: int, handled: int, failed: int,
               processes: tuple[int, int] | None = None) -> None:
        with self.lock:
            self.state, self.in_flight, self.handled, self.failed = state, in_flight, handled, failed
            self.processes = processes
            self.refreshed = time.monotonic()

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            body: dict[str, Any] = {"worker_id": self.worker_id, "state": self.state, "in_flight": self.in_flight,
                                    "handled": self.handled, "failed": self.failed}
            if self.processes is not None:
                body["processes_ready"], body["processes"] = self.processes
            stale = time.monotonic() - self.refreshed > STALE_SECONDS
        if path == "/healthz":
            ok = not stale
            body["status"] = "ok" if ok else "event loop not responding"
        elif path == "/readyz":
            ok = self.state == "ready" and not stale
            body["status"] = "ready" if ok else "not ready"
        else:
            return 404, {"status": "not found", "paths": ["/healthz", "/readyz"]}
        return (200 if ok else 503), body


class HealthServer:
    """``/healthz`` and ``/readyz`` on ``host:port`` (port 0: a free one, see ``port``)."""

    def __init__(self, state: HealthState, host: str, port: int) -> None:
        self.state = state
        health = state

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the stdlib's name
                code, body = health.answer(self.path.split("?", 1)[0])
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not logged
                return

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            raise ConfigError(f"cannot serve health checks on {host}:{port}: {error.strerror or error}",
                              hint="pick another --health-port (0 picks a free one) or --health-host") from None
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="flowcraft-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def check_ready_file(path: Path) -> None:
    """Refuse a ready file that could not be written, before the worker starts."""
    if path.is_dir():
        raise ConfigError(f"--ready-file {path} is a directory", hint="give a file path, e.g. /tmp/flowcraft-ready")
    if not path.parent.is_dir():
        raise ConfigError(f"--ready-file {path}: folder {path.parent} does not exist", hint="create it first")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"--ready-file {path}: folder {path.parent} is not writable")


def write_ready_file(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (a probe never reads half a file)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def remove_ready_file(path: Path) -> None:
    path.unlink(missing_ok=True)


class FleetHealth:
    """``--health-port``/``--ready-file`` of ``flowcraft worker --processes N``, served by the supervisor: each
    worker process writes ``<dir>/<pid>`` when it is ready (hidden option ``--ready-dir``) and removes it when
    it stops; the fleet is ready while all N processes run and each has its file (a process that died and is
    being restarted makes it not ready until its successor is). ``tick`` is called every supervisor poll."""

    def __init__(self, count: int, host: str, port: int | None, ready_file: Path | None) -> None:
        self.count = count
        self.ready_file = ready_file
        self.state = HealthState(f"supervisor-{os.getpid()}")
        self.server = HealthServer(self.state, host, port) if port is not None else None
        self.dir = Path(tempfile.mkdtemp(prefix="flowcraft-ready-"))
        self.ready = False
        self.was_ready = False  # ready at least once

    def child_args(self) -> list[str]:
        return [f"--ready-dir={self.dir}"]

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def tick(self, pids: Sequence[int], stopping: bool) -> bool:
        """Refresh the state from the live pids; True when the fleet just became ready for the first time."""
        ready_children = sum(1 for pid in pids if (self.dir / str(pid)).exists())
        ready = not stopping and len(pids) == self.count and ready_children == self.count
        state = "stopping" if stopping else "ready" if ready else "starting"
        # The file first, then the port: a probe that sees one answer never sees the other disagree.
        if self.ready_file is not None and ready != self.ready:
            if ready:
                write_ready_file(self.ready_file, {"worker_id": self.state.worker_id, "pid": os.getpid(),
                                                   "processes": list(pids), "ready_at": time.time()})
            else:
                remove_ready_file(self.ready_file)
        self.state.update(state, 0, 0, 0, processes=(ready_children, self.count))
        first = ready and not self.was_ready
        self.ready = ready
        self.was_ready = self.was_ready or ready
        return first

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.ready_file is not None:
            remove_ready_file(self.ready_file)
        shutil.rmtree(self.dir, ignore_errors=True)
