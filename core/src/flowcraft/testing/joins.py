"""Helpers of the tests that hold a store's joins to ``flowcraft.spi.apply_transition`` (the memory tables): a join
member's commit, what a commit decided in comparable form, and a random sequence of a join's member commits with
replays, redeliveries in recovery and conflicts, run on a store and on the memory tables side by side."""

from __future__ import annotations

import random
from typing import Any, Literal

from flowcraft.backends.memory import MemoryCoordinationStore
from flowcraft.spi import Arrival, Committed, Completion, CoordinationStore, Job, Transition, apply_transition


def member_commit(run_id: str, member: str, join: Job, expected: tuple[str, ...], *, arrived: bool = True,
                  token: str = "t", strategy: Literal["all", "any"] = "all", recovery: bool = False) -> Transition:
    """The finishing commit of the job ``member`` (a node of that id), its one arrival at ``join`` (the contribution
    ``{"from": member}`` when it arrived)."""
    contribution = {"from": member} if arrived else None
    return Transition(run_id, Job(run_id, "bp", member).key, completion=Completion(member, output=1, token=token),
                      arrivals=(Arrival(join, member, arrived=arrived, contribution=contribution, expected=expected,
                                        strategy=strategy),), finish=True, recovery=recovery)


def outcome(committed: Committed) -> dict[str, Any]:
    """What a commit decided, comparable across stores (jobs as their documents)."""
    if committed.conflict is not None:
        return {"conflict": committed.conflict.to_dict()}
    return {"fired": [job.to_dict() for job in committed.fired], "skipped": list(committed.skipped),
            "pending": committed.pending, "parked": committed.parked}


async def replayed_join(store: CoordinationStore, run_id: str, join: Job, members: tuple[str, ...],
                        strategy: Literal["all", "any"], seed: int) -> tuple[list[Job], dict[str, bool]]:
    """Each member's commit one to three times (replays with the same token, some with another: conflicts; some in
    recovery), members arriving or skipping, in a random order of ``seed``, on ``store`` and on the memory tables:
    every answer must be the same. Returns the jobs ``store`` fired and whether each member arrived."""
    rng = random.Random(seed)
    memory = MemoryCoordinationStore()
    arrived = {member: rng.random() < (0.5 if seed % 2 else 0.1) for member in members}
    sequence = [m for m in members for _ in range(rng.choice((1, 1, 2, 3)))]
    rng.shuffle(sequence)
    fired: list[Job] = []
    for step, member in enumerate(sequence):
        tx = member_commit(run_id, member, join, members, arrived=arrived[member], strategy=strategy,
                           token=rng.choice(("t", "t", "t", "other")), recovery=rng.random() < 0.3)
        got, want = await store.commit(tx), apply_transition(memory, tx)
        assert outcome(got) == outcome(want), f"step {step}: {member}"
        fired += got.fired
    return fired, arrived
