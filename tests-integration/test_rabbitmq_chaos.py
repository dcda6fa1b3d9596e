"""The chaos harness's short form on the ``rabbitmq`` backend (see test_chaos.py): 3 ``flowcraft worker``
processes SIGKILLed at random, the reconciler running; every run must end as computed independently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_chaos import assert_all_right, short_form
from test_rabbitmq_support import rabbitmq_options_fixture  # noqa: F401  # the fixture rabbitmq_options

from flowcraft.chaos import run_chaos

pytestmark = pytest.mark.asyncio


async def test_chaos_rabbitmq(tmp_path: Path, rabbitmq_options: dict[str, Any]) -> None:
    options = {**rabbitmq_options, "visibility_timeout": 5}
    assert_all_right(await run_chaos(short_form("rabbitmq", tmp_path, options)))
