"""The examples in examples/ run and print a completed (or cancelled) result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["sleep", "wait_resume", "map", "subflow", "cancel"])
def test_example_runs(name: str) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True,
                          timeout=60, check=True)
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("completed") or last == "cancelled", done.stdout
