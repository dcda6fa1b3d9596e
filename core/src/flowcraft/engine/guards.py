"""Guards against poison jobs: values no store can keep, blueprint definitions the engine cannot run, and
engine errors that a redelivery would only repeat.

Each check names what was wrong in one line, so a run fails with a reason instead of its job coming back
forever.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flowcraft.model import Blueprint

#: Exception types raised by mistakes in code or data, which a redelivery repeats: a job whose handling
#: raises one of them is redelivered a bounded number of times, then its run fails. Anything else (a
#: connection error, a busy database) is taken as transient and redelivered without a bound.
DETERMINISTIC_ERRORS: tuple[type[Exception], ...] = (
    TypeError, ValueError, AttributeError, LookupError, AssertionError, NameError, ArithmeticError,
    RecursionError, NotImplementedError,
)

#: values that are JSON as they are
JSON_SCALARS = (str, int, float, bool, type(None))


def json_problem(value: Any, what: str) -> str | None:
    """Why ``value`` cannot be stored as JSON (``what`` names it, e.g. "node 'a' output"), or None."""
    if isinstance(value, JSON_SCALARS):
        return None
    try:
        json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        return f"{what} is nested too deeply to store as JSON"
    except (TypeError, ValueError) as exc:
        return f"{what}{_where_not_json(value, '', set()) or f' is not JSON-serialisable: {exc}'}"
    return None


def context_problem(context: Mapping[Any, Any], what: str) -> str | None:
    """Why a mapping of context keys to values cannot be stored (keys must be strings, values JSON)."""
    for key, value in context.items():
        if not isinstance(key, str):
            return f"{what} key {key!r} is of type {type(key).__name__}; context keys must be strings"
        problem = json_problem(value, f"{what} value {key!r}")
        if problem is not None:
            return problem
    return None


def _where_not_json(value: Any, path: str, seen: set[int]) -> str:
    """The path inside ``value`` to the first part JSON cannot hold, as " at [...]: problem"."""
    if isinstance(value, JSON_SCALARS):
        return ""
    if id(value) in seen:
        return f"{_at(path)} refers back to itself (a circular reference)"
    if isinstance(value, Mapping):
        seen.add(id(value))
        for key, item in value.items():
            if not isinstance(key, JSON_SCALARS):
                return f"{_at(path)} has a key of type {type(key).__name__}; JSON keys must be strings"
            found = _where_not_json(item, f"{path}[{key!r}]", seen)
            if found:
                return found
        seen.discard(id(value))
        return ""
    if isinstance(value, list | tuple):
        seen.add(id(value))
        for index, item in enumerate(value):
            found = _where_not_json(item, f"{path}[{index}]", seen)
            if found:
                return found
        seen.discard(id(value))
        return ""
    return f"{_at(path)} is of type {type(value).__name__}, which is not JSON-serialisable"


def _at(path: str) -> str:
    return f" at {path}" if path else ""


def definition_problem(blueprint: Blueprint) -> str | None:
    """The first problem of ``blueprint`` as the loader would report it, or None.

    Blueprints are validated when loaded and when added to an App; this catches blueprints changed around
    that validation, when handling one of their jobs fails."""
    problems = blueprint.problems()
    return f"blueprint {blueprint.id!r}: {problems[0]}" if problems else None
