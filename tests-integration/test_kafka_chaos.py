"""The chaos short form on the ``kafka`` backend (Tansu + Cassandra 1.2 + Redis): 3 worker processes, a
random one SIGKILLed every 0.3-1.0 s, the reconciler running; 0 lost, 0 stuck, 0 wrong. A killed worker's
partitions move to the others after ``session_timeout_ms`` (6 s here), which replay from the committed
offsets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_chaos import assert_all_right, short_form
from test_kafka_contract import kafka_options

from flowcraft.chaos import run_chaos

pytestmark = pytest.mark.asyncio


async def test_chaos_kafka(tmp_path: Path, kafka_bootstrap: str, cassandra_contact_point: str,
                           redis_url: str) -> None:
    options: dict[str, Any] = {**kafka_options(kafka_bootstrap, cassandra_contact_point, redis_url),
                               "visibility_timeout": 5}
    assert_all_right(await run_chaos(short_form("kafka", tmp_path, options)))
