"""``flowcraft worker --processes N``: keep N worker processes running, like Celery's and Gunicorn's masters.

A child that exits while the fleet is not stopping is restarted after a backoff and the restart is logged
with its pid and exit code or signal. SIGTERM/SIGINT stop every child with SIGTERM (each finishes or hands
back its jobs within its ``--shutdown-timeout``), then SIGKILL whatever is still alive after
``stop_timeout``.

Crash loop rule: a child that exits within ``min_uptime`` seconds of its start failed *at start*. Each
worker slot counts its consecutive failures at start; the restart delay doubles with that count
(``backoff`` s, 2x, 4x, ... up to ``max_backoff``), and a child that stays up ``min_uptime`` resets it.
When one slot fails at start ``max_start_failures`` times in a row the supervisor stops the fleet and
raises a FlowcraftError naming the last exit (the workers' own error is printed above it).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from flowcraft.errors import FlowcraftError

MIN_UPTIME = 10.0
MAX_START_FAILURES = 5
BACKOFF = 0.5
MAX_BACKOFF = 30.0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(slots=True)
class _Slot:
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    start_failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Runs ``command`` ``count`` times and keeps it running until ``stop()`` or a crash loop."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        *,
        log: Callable[[str], None],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        min_uptime: float = MIN_UPTIME,
        max_start_failures: int = MAX_START_FAILURES,
        backoff: float = BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        stop_timeout: float = 60.0,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """``tick``: called every poll while supervising (e.g. to report the fleet's readiness)."""
        self.command = list(command)
        self.log = log
        self.env = env
        self.cwd = cwd
        self.min_uptime = min_uptime
        self.max_start_failures = max_start_failures
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        self.tick = tick
        self.restarts = 0
        self._slots = [_Slot() for _ in range(count)]
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process is not None and slot.process.poll() is None]

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Ask every child to stop (safe from a signal handler: it only sends signals)."""
        self._stopping = True
        self._signal_all(signal.SIGTERM)

    def run(self, poll: float = 0.2) -> None:
        """Start the children and supervise them until ``stop()``; raises FlowcraftError on a crash loop."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for slot in self._slots:
                self._start(slot)
            self.log(f"started {len(self._slots)} worker processes (pids {', '.join(map(str, self.pids))}); "
                     "Ctrl+C to stop")
            while not self._stopping:
                self._check(time.monotonic())
                if self.tick is not None:
                    self.tick()
                time.sleep(poll)
        finally:
            self._stopping = True
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _start(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL)
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _check(self, now: float) -> None:
        for slot in self._slots:
            process = slot.process
            if slot.restart_at is not None:
                if now >= slot.restart_at and not self._stopping:
                    self._start(slot)
                    self.restarts += 1
                    assert slot.process is not None
                    self.log(f"restarted worker process as pid {slot.process.pid}")
                continue
            if process is None or process.poll() is None:
                if process is not None and now - slot.started_at >= self.min_uptime:
                    slot.start_failures = 0  # it came up fine: the next exit is not a failure at start
                continue
            if self._stopping:
                return
            uptime = now - slot.started_at
            exit_text = describe_exit(process.returncode)
            if uptime >= self.min_uptime:
                slot.start_failures = 0
            else:
                slot.start_failures += 1
                if slot.start_failures >= self.max_start_failures:
                    raise FlowcraftError(
                        f"worker processes keep exiting right after start ({slot.start_failures} times in a row "
                        f"within {self.min_uptime:g}s; the last, pid {process.pid}, with {exit_text}); "
                        "stopped the fleet", hint="the workers' own error is printed above")
            delay = min(self.max_backoff, self.backoff * 2 ** slot.start_failures)
            slot.restart_at = now + delay
            self.log(f"worker process {process.pid} died ({exit_text}) after {uptime:.1f}s; "
                     f"restarting it in {delay:g}s")

    def _signal_all(self, sig: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(sig)

    def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for slot in self._slots:
            if slot.process is None:
                continue
            try:
                slot.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"worker process {slot.process.pid} did not stop within {self.stop_timeout:g}s; killing it")
                slot.process.kill()
                slot.process.wait()
