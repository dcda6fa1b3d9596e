"""``flowcraft_redis.layout.dumps`` (an encoder made once) writes what ``json.dumps`` with the same settings does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from flowcraft_redis.layout import dumps

VALUES: list[Any] = [
    None, True, False, 0, -7, 2**70, 1.5, 1e-300, 0.1 + 0.2, math.inf, -math.inf, "", "plain",
    "é ü 中 \" \\ \n \u2028 \x00", [], {}, [1, "a", None, [2.5, {"k": []}]],
    {"run_id": "r-1", "key": "a", "n": 3, "nested": {"x": [True, None]}},
    {"\u00e9": "\ud83d\ude00", "tab\t": 1}, (1, 2),
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_writes_what_json_dumps_does(value: Any) -> None:
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_dumps_raises_what_json_dumps_raises() -> None:
    for bad in ({1j: 1}, [object()], {"a": {1, 2}}):
        with pytest.raises(TypeError):
            dumps(bad)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(cycle)


def test_dumps_of_nan_is_what_json_dumps_writes() -> None:
    assert dumps(math.nan) == json.dumps(math.nan) == "NaN"
