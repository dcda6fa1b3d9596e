"""What a node sees (NodeContext) and returns (NodeResult), and the two kinds of node implementation."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowcraft.nodes.threads import sync_node_pool
from flowcraft.spi import ContextStore

_MISSING = object()


@dataclass(frozen=True, slots=True)
class NodeResult:
    """A node's result when it needs more than a plain output: an ``action`` that selects edges."""

    output: Any = None
    action: str | None = None


class RunContext:
    """The run's shared state as a node sees it: reads go to the context store, writes are buffered and
    committed with the node's completion record (so a failed or duplicate attempt changes nothing)."""

    __slots__ = ("_deletes", "_loaded", "_run_id", "_store", "_updates")

    def __init__(self, store: ContextStore, run_id: str, loaded: Mapping[str, Any] | None = None) -> None:
        self._store = store
        self._run_id = run_id
        self._updates: dict[str, Any] = {}
        self._deletes: set[str] = set()
        self._loaded = dict(loaded) if loaded is not None else None

    async def get(self, key: str, default: Any = None) -> Any:
        if key in self._updates:
            return self._updates[key]
        if key in self._deletes:
            return default
        if self._loaded is not None:
            return self._loaded.get(key, default)
        values = await self._store.get_many(self._run_id, [key])
        return values.get(key, default)

    async def has(self, key: str) -> bool:
        return (await self.get(key, _MISSING)) is not _MISSING

    async def set(self, key: str, value: Any) -> None:
        self._deletes.discard(key)
        self._updates[key] = value

    async def delete(self, key: str) -> None:
        self._updates.pop(key, None)
        self._deletes.add(key)

    async def to_dict(self) -> dict[str, Any]:
        base = dict(self._loaded) if self._loaded is not None else await self._store.get_all(self._run_id)
        for key in self._deletes:
            base.pop(key, None)
        base.update(self._updates)
        return base

    to_json = to_dict

    @property
    def pending_updates(self) -> dict[str, Any]:
        return dict(self._updates)

    @property
    def pending_view(self) -> Mapping[str, Any]:
        """The buffered writes themselves, not a copy (for reading only)."""
        return self._updates

    @property
    def pending_deletes(self) -> tuple[str, ...]:
        return tuple(sorted(self._deletes)) if self._deletes else ()


class NodeContext:
    """Everything a node receives."""

    __slots__ = (
        "_cancel", "attempt", "blueprint_id", "context", "dependencies", "idempotency_key", "input",
        "item", "node_id", "params", "run_id", "visit",
    )

    def __init__(
        self,
        *,
        input: Any,
        params: Mapping[str, Any],
        context: RunContext,
        run_id: str,
        blueprint_id: str,
        node_id: str,
        visit: int,
        attempt: int,
        item: int | None,
        dependencies: Mapping[str, Any],
        cancel_event: asyncio.Event | None = None,
    ) -> None:
        self._fill(input, params, context, run_id, blueprint_id, node_id, visit, attempt, item, dependencies,
                   cancel_event)

    @classmethod
    def _of(cls, input: Any, params: Mapping[str, Any], context: RunContext, run_id: str, blueprint_id: str,
           node_id: str, visit: int, attempt: int, item: int | None, dependencies: Mapping[str, Any]) -> NodeContext:
        """The constructor with positional arguments, what the engine calls for every node (a class called with
        keywords costs a dict of them)."""
        ctx = cls.__new__(cls)
        ctx._fill(input, params, context, run_id, blueprint_id, node_id, visit, attempt, item, dependencies, None)
        return ctx

    def _fill(self, input: Any, params: Mapping[str, Any], context: RunContext, run_id: str, blueprint_id: str,
              node_id: str, visit: int, attempt: int, item: int | None, dependencies: Mapping[str, Any],
              cancel_event: asyncio.Event | None) -> None:
        self.input = input
        self.params = params
        self.context = context
        self.run_id = run_id
        self.blueprint_id = blueprint_id
        self.node_id = node_id
        self.visit = visit
        self.attempt = attempt
        self.item = item
        self.dependencies = dependencies
        suffix = "" if item is None else f":{item}"
        self.idempotency_key = f"{run_id}:{node_id}:{visit}{suffix}"
        self._cancel = cancel_event  # made when first asked for: most nodes never are

    @property
    def _cancel_event(self) -> asyncio.Event:
        """Set when the node should stop (``cancelled``)."""
        event = self._cancel
        if event is None:
            event = self._cancel = asyncio.Event()
        return event

    @property
    def cancelled(self) -> bool:
        """True once the node should stop: its run was cancelled, it timed out, or its worker is shutting
        down. Sync code polls this (it cannot be interrupted); async code also gets CancelledError."""
        return self._cancel is not None and self._cancel.is_set()

    def __repr__(self) -> str:
        return f"NodeContext(run_id={self.run_id!r}, node_id={self.node_id!r}, visit={self.visit})"


class BaseNode:
    """A class node: ``prep`` -> ``exec`` -> ``post``; ``fallback`` after the last failed attempt.

    Each method may be sync or async. ``exec`` gets what ``prep`` returned; ``post`` gets what ``exec``
    returned and decides the node's result (default: that value as the output).
    """

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = dict(params or {})

    def prep(self, ctx: NodeContext) -> Any:
        return ctx.input

    def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        return prep_result

    def post(self, exec_result: Any, ctx: NodeContext) -> Any:
        return exec_result

    def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
        raise error


NodeFunction = Callable[[NodeContext], Any]
Implementation = NodeFunction | type[BaseNode]


async def call_maybe_async(func: Callable[..., Any], *args: Any) -> Any:
    """Await coroutine functions; run plain functions in the sync node pool so they never block the event
    loop. When the caller is cancelled (timeout, run cancelled, worker shutdown) a sync call cannot be
    stopped: its ``ctx.cancelled`` turns true so a cooperative node returns, and its thread is written off
    (``flowcraft.nodes.threads``)."""
    if inspect.iscoroutinefunction(func):
        return await func(*args)
    try:
        result, raised = await sync_node_pool().run(_call_catching, func, *args)
    except asyncio.CancelledError:
        for arg in args:
            if isinstance(arg, NodeContext):
                arg._cancel_event.set()
        raise
    if raised is not None:
        raise raised
    if inspect.isawaitable(result):
        return await result
    return result


def _call_catching(func: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
    """Call ``func`` in a worker thread and hand back what it raised as a value: raised again in the awaiting
    coroutine, a BaseException reaches the engine's handler like any node failure (a GeneratorExit thrown
    into the coroutine from the thread's future would close the coroutine chain instead)."""
    try:
        return func(*args), None
    except BaseException as exc:
        return None, exc


def is_class_node(implementation: Any) -> bool:
    return inspect.isclass(implementation) and issubclass(implementation, BaseNode)


class_node_methods: Sequence[str] = ("prep", "exec", "post", "fallback")


def has_own_fallback(implementation: Any) -> bool:
    return is_class_node(implementation) and implementation.fallback is not BaseNode.fallback


AsyncCall = Callable[[], Awaitable[Any]]
