"""What running a node came to, as one value the engine acts on (instead of tuples and exceptions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from flowcraft.spi import slot_setters

OutcomeState = Literal["completed", "retry_scheduled", "failed", "settled"]


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class NodeOutcome:
    """``completed``: the node (or its fallback) produced ``output`` and ``action``; the engine records and
    routes them (``due_at``: successors are due later, a sleep; ``fallback``: the node that produced them).
    ``retry_scheduled``: another attempt is enqueued, this delivery is done. ``failed``: the node failed for
    good with ``error``. ``settled``: a node kind handled the job itself (parked it, started a child run,
    fanned out); the engine has nothing left to do for it."""

    state: OutcomeState
    output: Any = None
    action: str | None = None
    due_at: float | None = None
    fallback: str | None = None
    error: BaseException | None = None

    def __init__(self, *, state: OutcomeState, output: Any = None, action: str | None = None,
                 due_at: float | None = None, fallback: str | None = None, error: BaseException | None = None
                 ) -> None:
        _fill(self, state, output, action, due_at, fallback, error)

    @staticmethod
    def _of(state: OutcomeState, output: Any, action: str | None, due_at: float | None, fallback: str | None,
            error: BaseException | None) -> NodeOutcome:
        """``NodeOutcome(...)`` with every argument positional, in field order (see ``flowcraft.spi.Job._of``)."""
        outcome: NodeOutcome = _new(NodeOutcome)
        _fill(outcome, state, output, action, due_at, fallback, error)
        return outcome

    @classmethod
    def completed(cls, output: Any, action: str | None = None, *, due_at: float | None = None,
                  fallback: str | None = None) -> NodeOutcome:
        return cls(state="completed", output=output, action=action, due_at=due_at, fallback=fallback)

    @classmethod
    def retry_scheduled(cls) -> NodeOutcome:
        return cls(state="retry_scheduled")

    @classmethod
    def failed(cls, error: BaseException) -> NodeOutcome:
        return cls(state="failed", error=error)

    @classmethod
    def settled(cls) -> NodeOutcome:
        return cls(state="settled")


_SLOTS = slot_setters(NodeOutcome, "state output action due_at fallback error")
_new = object.__new__


def _fill(outcome: NodeOutcome, state: OutcomeState, output: Any, action: str | None, due_at: float | None,
          fallback: str | None, error: BaseException | None) -> None:
    set_state, set_output, set_action, set_due_at, set_fallback, set_error = _SLOTS  # (see ``slot_setters``)
    set_state(outcome, state)
    set_output(outcome, output)
    set_action(outcome, action)
    set_due_at(outcome, due_at)
    set_fallback(outcome, fallback)
    set_error(outcome, error)
