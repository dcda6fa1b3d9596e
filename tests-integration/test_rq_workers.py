"""Worker presence on the rq backend against a real redis-server (issue 18, items 6 and 7): `flowcraft worker`
processes appear in `rq info` (rq's own worker registry) and in `flowcraft workers`, a client with only the
backend configured starts runs of the blueprints they published, and a killed worker drops out of both lists
once its heartbeat expires."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowcraft import connect
from flowcraft.errors import ConfigError
from servers.base import free_port
from servers.redis import RedisServer

APP_SOURCE = '''
from flowcraft import App, Flow

quick = Flow("quick", version="5")
quick.node("a", lambda ctx: (ctx.input or {}).get("n", 1))
quick.node("b", lambda ctx: ctx.input * 10)
quick.edge("a", "b")
app = App(flows=[quick])
'''
RQ = str(Path(sys.executable).with_name("rq"))


class WorkerProcess:
    def __init__(self, cwd: Path, redis_url: str, prefix: str, *args: str) -> None:
        command = [sys.executable, "-m", "flowcraft.cli", "worker", "--app", "rq_presence_app:app", "--backend", "rq",
                   "-o", f"redis_url={redis_url}", "-o", f"key_prefix={prefix}", "--lease-seconds", "3",
                   "--concurrency", "4", *args]
        self.process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr or ()), daemon=True)
        self._reader.start()

    def ready_id(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = next((line for line in list(self.lines) if " ready on backend rq" in line), None)
            if line is not None:
                return line.split()[1]  # "worker <id> (pid N) ready on backend rq, ..."
            assert self.process.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError("".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        return code


def rq_info(redis_url: str, queue: str) -> str:
    done = subprocess.run([RQ, "info", "--url", redis_url, "--only-workers", queue], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def flowcraft_workers(redis_url: str, prefix: str) -> list[dict[str, Any]]:
    """`flowcraft workers --json`, the real command."""
    done = subprocess.run([sys.executable, "-m", "flowcraft.cli", "workers", "--json", "--backend", "rq", "-o",
                           f"redis_url={redis_url}", "-o", f"key_prefix={prefix}"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


async def test_rq_workers_in_rq_info_flowcraft_workers_and_runs_without_the_app(
        tmp_path: Path, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rq_presence_app.py").write_text(APP_SOURCE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for name in ("FLOWCRAFT_APP", "FLOWCRAFT_BACKEND", "FLOWCRAFT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("flowcraft.client.PRESENCE_CACHE_SECONDS", 0.2)
    queue = f"{redis_prefix}queue"
    first, second = WorkerProcess(tmp_path, redis_url, redis_prefix), WorkerProcess(tmp_path, redis_url, redis_prefix)
    client = connect("rq", redis_url=redis_url, key_prefix=redis_prefix)  # no app
    try:
        killed, kept = first.ready_id(), second.ready_id()
        ids = {killed, kept}
        info = rq_info(redis_url, queue)
        assert all(worker_id in info for worker_id in ids), info
        assert str(first.process.pid) in info and str(second.process.pid) in info

        result = await client.run("quick", {"n": 4}, timeout=30)
        assert (result.status, result.output) == ("completed", 40)
        rows = flowcraft_workers(redis_url, redis_prefix)
        assert {row["worker_id"] for row in rows} == ids
        assert {(row["backend"], row["concurrency"], row["blueprints"][0]["version"]) for row in rows} == {
            ("rq", 4, "5")}

        # a killed worker cannot remove its entries: both expire with its heartbeat (3 intervals of 1 s)
        first.stop(signal.SIGKILL)
        wait_until(lambda: killed not in rq_info(redis_url, queue), "the killed worker leaving rq info")
        assert [found.worker_id for found in await client.workers()] == [kept]
        assert second.stop() == 0, "".join(second.lines)
        assert rq_info(redis_url, queue).count("w-") == 0
        assert await client.workers() == []
        await asyncio.sleep(0.3)  # past the client's cache of the published blueprints
        with pytest.raises(ConfigError, match="no live worker has published blueprint 'quick'"):
            await client.start("quick")
    finally:
        first.stop(signal.SIGKILL)
        second.stop(signal.SIGKILL)
        await client.close()


def test_rq_worker_is_ready_only_once_redis_answers(tmp_path: Path, redis_prefix: str, start_server: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Started before its Redis (a pod starting beside its server), the worker waits, says nothing about being
    ready and writes no ready file until the server answers; then it is ready and consuming."""
    (tmp_path / "rq_presence_app.py").write_text(APP_SOURCE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    port = free_port()
    ready_file = tmp_path / "ready"
    worker = WorkerProcess(tmp_path, f"redis://127.0.0.1:{port}/0", redis_prefix, "--ready-file", str(ready_file))
    try:
        wait_until(lambda: any("trying again for up to" in line for line in worker.lines), "the worker trying Redis",
                   timeout=30)
        time.sleep(1.0)
        assert worker.process.poll() is None, "".join(worker.lines)
        assert not any(" ready on backend" in line for line in worker.lines) and not ready_file.exists()
        start_server(RedisServer, port=port)
        worker_id = worker.ready_id()
        assert json.loads(ready_file.read_text())["worker_id"] == worker_id
    finally:
        assert worker.stop() == 0, "".join(worker.lines)
    assert not ready_file.exists()
