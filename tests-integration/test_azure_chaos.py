"""The chaos harness's short form on the ``azure`` backend (Azurite + Cosmos emulator + Redis): 3 worker
processes SIGKILLed at random, the reconciler running; every run must end right (0 lost, 0 stuck, 0 wrong)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_azure_support import azure_names, azure_options  # noqa: F401  # fixtures
from test_chaos import assert_all_right, short_form

from flowcraft.chaos import run_chaos

pytestmark = pytest.mark.asyncio


async def test_chaos_azure(tmp_path: Path, azure_options: dict[str, Any]) -> None:  # noqa: F811
    options = {**azure_options, "visibility_timeout": 5}
    assert_all_right(await run_chaos(short_form("azure", tmp_path, options)))
