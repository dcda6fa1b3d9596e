"""The chaos harness in its short form on every backend: 3 ``flowcraft worker`` processes, about 50 runs of
every primitive, a random worker SIGKILLed every 0.3-1.0 s for 12 s, ``flowcraft reconcile --watch``
running; on rq the Redis server (append-only file) is also restarted halfway. Every run must end as
computed independently: 0 lost, 0 stuck, 0 wrong. The long form is ``nox -s chaos`` (see README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowcraft.chaos import ChaosOptions, ChaosReport, run_chaos
from servers import RedisServer

pytestmark = pytest.mark.asyncio

RUNS = 50
SECONDS = 12.0
WORKERS = 3


def short_form(backend: str, workdir: Path, options: dict[str, Any], **extra: Any) -> ChaosOptions:
    return ChaosOptions(backend, runs=RUNS, seconds=SECONDS, workers=WORKERS, workdir=workdir,
                        options={key: str(value) for key, value in options.items()}, settle_timeout=150.0,
                        **extra)


def assert_all_right(report: ChaosReport) -> None:
    print(report.line())
    assert report.kills > 0
    assert (report.lost, report.stuck, report.wrong, report.unreadable_log_lines) == (0, 0, 0, 0), (
        f"{report.line()}\n{report.details()}")


async def test_chaos_sqlite(tmp_path: Path) -> None:
    assert_all_right(await run_chaos(short_form("sqlite", tmp_path, {"visibility_timeout": 2})))


async def test_chaos_rq_with_a_redis_restart(tmp_path: Path, start_server: Any) -> None:
    server: RedisServer = start_server(RedisServer, appendonly=True, appendfsync="always")
    options = {"redis_url": server.url, "key_prefix": f"fcchaos:{tmp_path.name}:", "visibility_timeout": 2}
    report = await run_chaos(short_form("rq", tmp_path, options, restart_server=server.restart))
    assert report.server_restarts == 1
    assert_all_right(report)


async def test_chaos_sqs(tmp_path: Path, sqs_options: dict[str, Any]) -> None:
    options = {**sqs_options, "visibility_timeout": 5}
    assert_all_right(await run_chaos(short_form("sqs", tmp_path, options)))
