"""The chaos harness's short form on the ``rabbitmq`` backend (see test_chaos.py): 3 ``flowcraft worker``
processes SIGKILLed at random, the reconciler running, and the broker (a private node, durable quorum queue)
restarted halfway: every run must end as computed independently, with the right outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_chaos import assert_all_right, short_form
from test_rabbitmq_support import rabbitmq_options_fixture  # noqa: F401  # the fixture rabbitmq_options

from flowcraft.chaos import run_chaos
from servers import RabbitMqServer

pytestmark = pytest.mark.asyncio


async def test_chaos_rabbitmq_with_a_broker_restart(tmp_path: Path, rabbitmq_options: dict[str, Any],
                                                    start_server: Any) -> None:
    broker: RabbitMqServer = start_server(RabbitMqServer)
    # a process that has not reached the broker yet (the reconciler enqueues only when it finds a stalled run)
    # keeps trying for connect_timeout: a loaded machine restarts RabbitMQ in 5-30 s
    options = {**rabbitmq_options, "amqp_url": broker.url, "visibility_timeout": 5, "connect_timeout": 60}
    report = await run_chaos(short_form("rabbitmq", tmp_path, options, restart_server=broker.restart))
    assert report.server_restarts == 1
    assert_all_right(report)
