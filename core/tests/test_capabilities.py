"""Backend.capabilities: decided once from the components as built; a preset's factory wires the fast paths,
an overridden component turns them off; a broken factory is reported in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowcraft.backends.memory import (
    MemoryContextStore,
    MemoryCoordinationStore,
    MemoryQueue,
    MemoryStatusStore,
    memory_backend,
)
from flowcraft.backends.sqlite import SqliteCoordinationStore, SqliteDatabase
from flowcraft.errors import PluginError, UnsupportedError
from flowcraft.plugins import Preset, _load_factory, registry
from flowcraft.spi import Backend, Capabilities, RunRecord


def test_memory_backend_declares_its_fast_paths() -> None:
    assert memory_backend().capabilities == Capabilities(applies_context=True, prefetches_status=True, dispatches=True,
                                                         releases_lease=True, acks=True, continues=True, notifies=True,
                                                         writes_context=True, starts=True, ends=True)
    assert registry().build("memory").capabilities == memory_backend().capabilities
    alone = MemoryCoordinationStore()  # built without the other components: the engine does each step itself
    assert not (alone.applies_context or alone.dispatches or alone.acks or alone.continues or alone.starts
                or alone.ends)
    assert not MemoryQueue().prefetches_status
    assert not MemoryStatusStore().writes_context  # no context store to write to
    no_status = MemoryCoordinationStore(MemoryContextStore(), queue=MemoryQueue())
    assert not (no_status.continues or no_status.starts or no_status.ends)  # no status store


async def test_transition_with_context_is_refused_by_a_store_that_does_not_declare_writes_context() -> None:
    """The base method checks ``writes_context`` once for every store: one built alone neither writes the context
    nor transitions."""
    status = MemoryStatusStore()
    await status.create(RunRecord("r", "bp"))
    with pytest.raises(UnsupportedError, match="the memory status store cannot write the context"):
        await status.transition_with_context("r", ["running"], "completed", {}, context={"_result": 1})
    record = await status.get("r")
    assert record is not None and record.status == "running"


async def test_sqlite_factory_wires_applies_context_and_an_override_turns_it_off(tmp_path: Path) -> None:
    options = {"path": str(tmp_path / "f.db")}
    wired = registry().build("sqlite", options)
    mixed = registry().build("sqlite", options, overrides={"queue": "memory"})
    try:
        assert wired.capabilities == Capabilities(applies_context=True, prefetches_status=True, dispatches=True,
                                                  releases_lease=True, acks=True, continues=True, notifies=True,
                                                  writes_context=True, ends=True)
        assert wired.name == "sqlite"
        assert wired.options["path"] == tmp_path / "f.db"
        assert not mixed.capabilities.applies_context and not mixed.coordination.applies_context
        assert not mixed.capabilities.writes_context  # a status store built alone writes no context
        assert not mixed.capabilities.dispatches and not mixed.capabilities.prefetches_status
    finally:
        await wired.close()
        await mixed.close()


def test_capabilities_follow_the_components_they_are_read_from() -> None:
    database = SqliteDatabase(":memory:")
    paired = Backend(MemoryQueue(), MemoryContextStore(), MemoryStatusStore(),
                     SqliteCoordinationStore(database, applies_context=True))
    assert paired.capabilities == Capabilities(applies_context=True, releases_lease=True, notifies=True)
    with pytest.raises(AttributeError):
        paired.capabilities.applies_context = False  # type: ignore[misc]  # frozen: checked at run time too


def test_a_factory_that_cannot_be_imported_is_one_line() -> None:
    preset = Preset("broken", "memory", "memory", "memory", "memory", factory="no_such_module_x:build")
    with pytest.raises(PluginError, match=r"backend 'broken': its factory 'no_such_module_x:build' cannot be "
                                          r"imported: ModuleNotFoundError"):
        _load_factory(preset)


def test_acks_without_dispatches_is_refused_in_one_line() -> None:
    class Acking(MemoryCoordinationStore):
        acks = True

    built = memory_backend()
    with pytest.raises(PluginError, match=r"coordination store Acking declares acks without dispatches: a store "
                                          r"that acks deliveries must also queue what they fired"):
        Backend(built.queue, built.context, built.status, Acking())


def test_continues_without_dispatches_is_a_capability_of_its_own() -> None:
    """A store that hands jobs into the queue's in-flight set need not queue the rest: the engine does."""
    class Continuing(MemoryCoordinationStore):
        continues = True

    built = memory_backend()
    capabilities = Backend(built.queue, built.context, built.status, Continuing()).capabilities
    assert capabilities.continues and not capabilities.dispatches and not capabilities.acks


def test_split_hand_over_hands_due_jobs_up_to_the_room_and_never_in_recovery() -> None:
    from flowcraft.spi import Job, Transition, split_hand_over

    now_job, later, other = Job("r", "bp", "a"), Job("r", "bp", "b", due_at=200.0), Job("r", "bp", "c")
    fired = [later, now_job, other]
    asked = Transition("r", "n", finish=True, owner="w1", continue_up_to=1)
    assert split_hand_over(asked, fired, 100.0) == ([now_job], [later, other])
    assert split_hand_over(asked, fired, 300.0) == ([later], [now_job, other])  # due by then
    assert split_hand_over(Transition("r", "n", finish=True, owner="w1", continue_up_to=5, recovery=True),
                           fired, 100.0) == ([], fired)
    assert split_hand_over(Transition("r", "n", finish=True, continue_up_to=5), fired, 100.0) == ([], fired)
