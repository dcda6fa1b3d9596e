"""``flowcraft.spi.quick_init``: the faster ``__init__`` of the engine's frozen records behaves as the one
``dataclass`` writes (same signature, defaults, factories, post-init, still frozen)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import pytest

from flowcraft.engine.outcome import NodeOutcome
from flowcraft.spi import Arrival, Begin, Committed, Completion, Job, Transition, quick_init


@dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "b"
    _: KW_ONLY
    c: list[int] = field(default_factory=list)
    d: Any = None
    e: int = field(init=False, default=7)
    f: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "f", f"{self.a}{self.b}")


Quick = quick_init(dataclass(frozen=True, slots=True)(type("Quick", (), {
    "__annotations__": dict(_Plain.__annotations__), "b": "b", "_": None,
    "c": field(default_factory=list), "d": None, "e": field(init=False, default=7),
    "f": field(init=False, repr=False, compare=False), "__post_init__": _Plain.__post_init__,
})))


def _signature(cls: type) -> list[tuple[str, Any, str]]:
    return [(p.name, p.kind, repr(p.default)) for p in inspect.signature(cls).parameters.values()]


def test_the_signature_and_the_values_are_those_of_the_dataclass_init() -> None:
    assert [(n, k) for n, k, _ in _signature(Quick)] == [(n, k) for n, k, _ in _signature(_Plain)]
    for args, kwargs in [((1,), {}), ((1, "x"), {"c": [2], "d": {}})]:
        quick, plain = Quick(*args, **kwargs), _Plain(*args, **kwargs)
        assert [getattr(quick, f.name) for f in dataclasses.fields(Quick)] == \
            [getattr(plain, f.name) for f in dataclasses.fields(_Plain)]
    assert Quick(1).c is not Quick(1).c  # a fresh default per instance
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick(1, "x", [])  # type: ignore[call-arg]  # keyword-only stays keyword-only


@pytest.mark.parametrize("cls", [Job, Completion, Arrival, Transition, Committed, Begin, NodeOutcome])
def test_the_engine_records_keep_their_dataclass_signature(cls: type) -> None:
    rebuilt = dataclass(frozen=True, slots=True)(type(cls.__name__, (), {
        "__annotations__": {f.name: f.type for f in dataclasses.fields(cls)},
        **{f.name: field(default=f.default, default_factory=f.default_factory, init=f.init, kw_only=f.kw_only)
           for f in dataclasses.fields(cls)},
    }))
    assert _signature(cls) == _signature(rebuilt)


def test_a_job_is_still_frozen_hashable_replaceable_and_picklable() -> None:
    job = Job("r", "bp", "n", visit=2, input=1, has_input=True)
    assert job.key == "2:n"
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.visit = 3  # type: ignore[misc]
    assert job == Job("r", "bp", "n", visit=2, input=1, has_input=True)
    assert hash(job) == hash(Job("r", "bp", "n", visit=2, input=1, has_input=True))
    assert dataclasses.replace(job, visit=4).key == "4:n"
    assert pickle.loads(pickle.dumps(job)) == job
