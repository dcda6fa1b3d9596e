"""The completion record and the context a commit writes, against a real redis-server, with the rq preset's stores:
what a later commit of the same job gets back as the winner (``Committed.conflict``) is the completion as it was
committed, and the context holds the committed values, whatever JSON they need (nested values, floats, text that
needs escaping, non-ASCII text)."""

from __future__ import annotations

from typing import Any

from flowcraft.plugins import registry
from flowcraft.spi import Completion, Transition

UPDATES: dict[str, Any] = {
    "_outputs.n": {"rows": [1, 2.5, None, True], "name": "caf\u00e9 \u6f22 \U0001f600"},
    "_timeline.0:n": {"node_id": "n", "visit": 0, "state": "done",
                      "attempts": [{"attempt": 1, "worker": "w-1", "started_at": 1795718388.3401191,
                                    "finished_at": 1795718388.3404353}],
                      "started_at": 1795718388.3401191, "finished_at": 1795718388.3404353},
    'quo"te\\back\nslash': "line\nbreak \"quoted\" \\ \u2028",
    "empty": {},
    "number": -0.0,
}


async def test_a_later_commit_gets_the_committed_completion_back(redis_url: str, redis_prefix: str) -> None:
    backend = registry().build("rq", {"redis_url": redis_url, "key_prefix": redis_prefix,
                                      "queue_name": redis_prefix.strip(":") + "-q"})
    try:
        assert backend.capabilities.applies_context
        run = "run-record"
        await backend.context.apply(run, {"old": 1, "kept": 2})
        first = Completion("n", output={"rows": [1, 2.5, None, True]}, action="go", token="t-first",
                           context_updates=UPDATES, context_deletes=("old",))
        committed = await backend.coordination.commit(Transition(run, "0:n", completion=first, finish=True))
        assert committed.conflict is None
        assert await backend.context.get_all(run) == {**UPDATES, "kept": 2}

        second = Completion("n", output="other", token="t-second", context_updates={"_outputs.n": "other"})
        again = await backend.coordination.commit(Transition(run, "0:n", completion=second, finish=True))
        assert again.conflict is not None
        assert again.conflict.to_dict() == first.to_dict()
        assert await backend.context.get_all(run) == {**UPDATES, "kept": 2}
    finally:
        await backend.close()


async def test_a_completion_without_context_writes_comes_back_as_committed(redis_url: str, redis_prefix: str) -> None:
    backend = registry().build("rq", {"redis_url": redis_url, "key_prefix": redis_prefix,
                                      "queue_name": redis_prefix.strip(":") + "-q"})
    try:
        run = "run-plain"
        first = Completion("n", output=[1.5, "x"], token="t-first")
        committed = await backend.coordination.commit(Transition(run, "0:n", completion=first, finish=True))
        assert committed.conflict is None
        second = Completion("n", output=2, token="t-second")
        again = await backend.coordination.commit(Transition(run, "0:n", completion=second, finish=True))
        assert again.conflict is not None
        assert again.conflict.to_dict() == first.to_dict()
    finally:
        await backend.close()
