"""The hand-written ``__init__`` of the engine's hottest records (``flowcraft.spi.slot_setters``) stays what
``dataclass`` would write: the same signature and the same values, so the two cannot drift apart."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from flowcraft.engine.outcome import NodeOutcome
from flowcraft.spi import Arrival, Committed, Completion, Job, Transition

RECORDS = [Job, Completion, Arrival, Transition, Committed, NodeOutcome]


def _twin(cls: type) -> type:
    """A plain frozen dataclass with ``cls``'s fields: the ``__init__`` dataclass would write for ``cls``."""
    namespace: dict[str, Any] = {"__annotations__": {f.name: f.type for f in dataclasses.fields(cls)}}
    for f in dataclasses.fields(cls):
        namespace[f.name] = dataclasses.field(default=f.default, default_factory=f.default_factory, init=f.init,
                                              kw_only=f.kw_only)
    return dataclasses.dataclass(frozen=True)(type(f"{cls.__name__}Twin", (), namespace))


def _factories(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}


@pytest.mark.parametrize("cls", RECORDS)
def test_the_signature_is_the_one_dataclass_would_write(cls: type) -> None:
    """Names, kinds and defaults in order; a field with a default factory takes None for 'not passed'."""
    ours = list(inspect.signature(cls).parameters.values())
    theirs = list(inspect.signature(_twin(cls)).parameters.values())
    assert [(p.name, p.kind) for p in ours] == [(p.name, p.kind) for p in theirs]
    for mine, generated in zip(ours, theirs, strict=True):
        if mine.name in _factories(cls):
            assert mine.default is None
        else:
            assert mine.default is generated.default or mine.default == generated.default, mine.name


@pytest.mark.parametrize("cls", RECORDS)
def test_every_field_gets_what_the_generated_init_would_set(cls: type) -> None:
    twin = _twin(cls)
    parameters = inspect.signature(twin).parameters.values()
    passed = {p.name: object() for p in parameters}  # a distinct value for every parameter
    required = {p.name: passed[p.name] for p in parameters if p.default is inspect.Parameter.empty}
    for values in (passed, required):
        positional = [values[p.name] for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD and p.name in values]
        keyword = {p.name: values[p.name] for p in parameters if p.kind is p.KEYWORD_ONLY and p.name in values}
        ours, generated = cls(*positional, **keyword), twin(*positional, **keyword)
        for f in dataclasses.fields(cls):
            if f.init:
                assert getattr(ours, f.name) == getattr(generated, f.name), f.name
    for name in _factories(cls):  # a fresh default per record, as a default factory makes it
        first, second = _build(cls, required), _build(cls, required)
        assert getattr(first, name) == getattr(generated, name) and getattr(first, name) is not getattr(second, name)


def _build(cls: type, values: dict[str, Any]) -> Any:
    parameters = inspect.signature(cls).parameters.values()
    return cls(*[values[p.name] for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD],
               **{p.name: values[p.name] for p in parameters if p.kind is p.KEYWORD_ONLY and p.name in values})


@pytest.mark.parametrize("cls", RECORDS)
def test_of_takes_the_init_arguments_positionally_in_field_order(cls: Any) -> None:
    init = [f.name for f in dataclasses.fields(cls) if f.init]
    assert list(inspect.signature(cls._of).parameters) == init
    values = {name: object() for name in init}
    built, made = cls._of(*values.values()), _build(cls, values)
    assert type(built) is cls and built == made
    assert all(getattr(built, f.name) == getattr(made, f.name) for f in dataclasses.fields(cls))


def test_a_job_is_still_frozen_hashable_replaceable_and_picklable() -> None:
    job = Job("r", "bp", "n", visit=2, input=1, has_input=True)
    assert job.key == "2:n" and Job("r", "bp", "n", visit=2, item=3).key == "2:3:n"
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.visit = 3  # type: ignore[misc]
    assert job == Job("r", "bp", "n", visit=2, input=1, has_input=True)
    assert hash(job) == hash(Job("r", "bp", "n", visit=2, input=1, has_input=True))
    assert dataclasses.replace(job, visit=4).key == "4:n"
    assert pickle.loads(pickle.dumps(job)) == job
    with pytest.raises(TypeError):
        Job("r", "bp", "n", 2)  # type: ignore[misc]  # keyword-only stays keyword-only
