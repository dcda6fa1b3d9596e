"""Real `flowcraft worker` processes on SQLite: a bounded SIGTERM shutdown with a stuck sync node, and a
killed worker's job taken over after lease_seconds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowcraft.cli import cli

APP_MODULE = "lifecycle_test_app"
APP_SOURCE = '''
import os
import time
from pathlib import Path

from flowcraft import App, Flow

def stubborn(ctx):
    """Blocks while the file 'hold' exists and never looks at ctx.cancelled."""
    with open("starts.log", "a") as log:
        log.write(f"{os.getpid()}\\n")
    while Path("hold").exists():
        time.sleep(0.02)
    return "done"

flow = Flow("stubborn")
flow.node("work", stubborn)
app = App(flows=[flow])
'''


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Path:
    path = make_project(APP_MODULE, APP_SOURCE, sqlite_config=True)
    (path / "hold").touch()
    assert CliRunner().invoke(cli, ["setup"]).exit_code == 0
    return path


class WorkerProcess:
    def __init__(self, cwd: Path, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "flowcraft.cli", "worker", *args], cwd=cwd,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.output: list[str] = []
        self._reader = threading.Thread(target=lambda: self.output.extend(self.process.stderr or ()), daemon=True)
        self._reader.start()
        wait_until(lambda: any("on backend sqlite" in line for line in self.output) or self.process.poll() is not None,
                   "the worker starting")
        assert self.process.poll() is None, "".join(self.output)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=5)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def starts(project: Path) -> int:
    log = project / "starts.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def start_run(project: Path) -> str:
    result = CliRunner().invoke(cli, ["run", "stubborn"])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def run_status(run_id: str) -> str:
    result = CliRunner().invoke(cli, ["status", run_id, "--json"])
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["status"])


def test_sigterm_with_a_stuck_sync_node_exits_within_the_shutdown_timeout_and_hands_the_job_back(
        project: Path) -> None:
    first = WorkerProcess(project, "--shutdown-timeout", "1", "--lease-seconds", "2")
    try:
        run_id = start_run(project)
        wait_until(lambda: starts(project) == 1, "the node starting")
        signalled = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=20) == 0
        assert time.monotonic() - signalled < 8  # 1 s of grace, then the job is handed back at once
    finally:
        first.stop()
    assert "1 jobs still running after the 1s shutdown timeout; giving them back to the queue" in "".join(first.output)
    assert run_status(run_id) == "running"
    (project / "hold").unlink()
    second = WorkerProcess(project, "--lease-seconds", "2")
    try:
        wait_until(lambda: run_status(run_id) == "completed", "the handed-back job completing")
    finally:
        second.stop()
    assert starts(project) == 2


def test_a_killed_workers_job_is_taken_over_after_lease_seconds(project: Path) -> None:
    first = WorkerProcess(project, "--lease-seconds", "3")
    try:
        run_id = start_run(project)
        wait_until(lambda: starts(project) == 1, "the node starting")
        time.sleep(1.5)  # a heartbeat or two renewed the lease and the queue visibility
        first.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first.process.wait(timeout=10)
    finally:
        first.stop()
    (project / "hold").unlink()
    second = WorkerProcess(project, "--lease-seconds", "3")
    try:
        wait_until(lambda: starts(project) == 2, "the job being taken over")
        taken_over = time.monotonic() - killed
        wait_until(lambda: run_status(run_id) == "completed", "the run completing")
    finally:
        second.stop()
    # the last renewal was at most lease/3 before the kill: the job is free 2-3 s after it, not after 30 s
    assert 1.5 <= taken_over <= 8, taken_over
