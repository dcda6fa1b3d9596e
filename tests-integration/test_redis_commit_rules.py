"""The Redis coordination Lua against the Python rules, on generated sequences.

Each example draws a small graph (targets with their expected predecessors and join strategy) and a sequence
of coordination calls: schedule, begin / renew / release (leases), commit (with or without a completion,
conflicting tokens, arrivals that arrive or skip, joins ``all`` and ``any`` of one to three members, recovery,
finish with the lease owner), park and unpark. The sequence runs on a ``RedisCoordinationStore`` (a key
prefix of its own per example) and on ``MemoryCoordinationStore``'s tables through
``flowcraft.spi.apply_transition``; every answer (fired jobs with their join inputs, skipped keys, pending and
parked counts, conflicts, leases) and the state left behind (job states, stored completions, pending and
parked jobs) must be the same, and ``delete_run`` must leave no key of the run behind.

Joins are counted (lua/commit.lua's kinds ``k`` and ``w``, ``coordination.COUNTED_JOIN``) from a drawn step of the
sequence on: before it the store records a join's members as the version before counted joins did (kind ``j``,
which keeps no count), so a sequence runs uncounted, counted, or upgraded in flight. A wide target, ``WIDE``, has
more members than ``COUNTED_JOIN``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from flowcraft.backends.memory import MemoryCoordinationStore
from flowcraft.spi import Arrival, Completion, Job, Transition, apply_transition
from flowcraft.testing.joins import outcome
from flowcraft_redis import RedisCoordinationStore, coordination, make_client
from flowcraft_redis.layout import Keys, completion_field, job_field, parse_completion, parse_state

RUN = "run:1/ü x"
# ids with ':', '/', spaces and unicode, as every store must take
SOURCES = ("s:1",)
TARGETS = ("t 1", "t:2", "tü3", "w:4")  # few nodes, so a sequence revisits them: replays, conflicts, joins completing
NODES = SOURCES + TARGETS
MEMBERS = ("a", "b:x", "c ü")
WIDE = "w:4"  # a join of MEMBERS and more than COUNTED_JOIN others, which never arrive, so it decides by 'any'
WIDE_MEMBERS = MEMBERS + tuple(f"x{i}" for i in range(coordination.COUNTED_JOIN))
OWNERS = ("w1", "w2")
LIVE, EXPIRED = 60.0, -5.0  # lease lengths far from "now", so both stores judge them alike

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(blacklist_categories=("Cs",)),
                                                                 max_size=4),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=3), inner, max_size=3),
    max_leaves=4,
)


@dataclass(frozen=True)
class Join:
    expected: tuple[str, ...]
    strategy: Literal["all", "any"]


def job_of(node: str, value: Any = None, has_input: bool = False) -> Job:
    return Job(RUN, "bp", node, input=value, has_input=has_input)


@st.composite
def arrivals(draw: st.DrawFn, graph: dict[str, Join]) -> Arrival:
    target = draw(st.sampled_from(TARGETS))
    join = graph[target]
    arrived = draw(st.booleans())
    contribution = draw(json_values) if arrived else None
    single = len(join.expected) <= 1
    job = job_of(target, contribution if single else None, single)
    members = MEMBERS if target == WIDE else join.expected
    return Arrival(job, draw(st.sampled_from(members)), arrived=arrived, contribution=contribution,
                   expected=join.expected, strategy=join.strategy)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    graph = {target: Join(tuple(draw(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=3, unique=True))),
                          draw(st.sampled_from(("all", "any"))))
             for target in TARGETS}
    graph[WIDE] = Join(tuple(draw(st.permutations(WIDE_MEMBERS))), "any")
    node = st.sampled_from(NODES)
    owner = st.sampled_from(OWNERS)
    completion = st.builds(
        lambda output, action, token: Completion(node_id="n", output=output, action=action, token=token),
        json_values, st.sampled_from((None, "go")), st.sampled_from(("token-1", "token-2")))
    commit = st.tuples(st.just("commit"), node, st.none() | completion | completion,
                       st.lists(arrivals(graph), max_size=4), st.booleans(), st.booleans(), st.none() | owner)
    operation = st.one_of(
        st.tuples(st.just("schedule"), st.lists(node, min_size=1, max_size=3)),
        st.tuples(st.just("begin"), node, owner, st.sampled_from((LIVE, EXPIRED))),
        st.tuples(st.just("renew"), node, owner, st.sampled_from((LIVE, EXPIRED))),
        st.tuples(st.just("release"), node, owner),
        commit, commit, commit,  # the operation under test, drawn most often
        st.tuples(st.just("park"), node),
        st.tuples(st.just("unpark"), node),
    )
    return draw(st.lists(operation, min_size=10, max_size=40))


async def run_both(redis_url: str, ops: list[tuple[Any, ...]], counted_from: int = 0) -> None:
    """``ops`` on both stores; joins are counted from step ``counted_from`` on (before it: as the version before
    counted joins recorded them)."""
    client = make_client(redis_url)
    prefix = f"fctest:{uuid.uuid4().hex}:"
    redis = RedisCoordinationStore(client, key_prefix=prefix, state_ttl_seconds=600)
    memory = MemoryCoordinationStore()
    keys = Keys(prefix)
    try:
        for step, op in enumerate(ops):
            kind, where = op[0], f"step {step}: {op!r}"
            if kind == "schedule":
                jobs = [job_of(node) for node in op[1]]
                inserted = await redis.schedule(RUN, jobs)
                assert [j.key for j in inserted] == [j.key for j in await memory.schedule(RUN, jobs)], where
            elif kind == "begin":
                job, owner, seconds = job_of(op[1]), op[2], op[3]
                got, want = await redis.begin(job, owner, seconds), await memory.begin(job, owner, seconds)
                assert (got.lease, got.state) == (want.lease, want.state), where
                assert (got.completion and got.completion.to_dict()) == (want.completion and want.completion.to_dict())
            elif kind == "renew":
                key, owner, seconds = job_of(op[1]).key, op[2], op[3]
                assert await redis.renew(RUN, key, owner, seconds) == await memory.renew(RUN, key, owner, seconds), \
                    where
            elif kind == "release":
                key, owner = job_of(op[1]).key, op[2]
                await redis.release(RUN, key, owner)
                await memory.release(RUN, key, owner)
            elif kind == "commit":
                _, node, completion, arrived, finish, recovery, owner = op
                tx = Transition(RUN, job_of(node).key, completion=completion, arrivals=tuple(arrived), finish=finish,
                                recovery=recovery, owner=owner)
                with mock.patch.object(coordination, "COUNTED_JOIN", 1 if step >= counted_from else 10**6):
                    got = await redis.commit(tx)
                want = apply_transition(memory, tx)
                assert outcome(got) == outcome(want), where
                finished_by_owner = want.conflict is None and finish and owner is not None
                # the Lua drops the finishing owner's lease (releases_lease); the engine does it otherwise
                if finished_by_owner and redis.releases_lease:
                    await memory.release(RUN, tx.job_key, owner)
            elif kind == "park":
                key = job_of(op[1]).key
                got, want = await redis.park(RUN, key), await memory.park(RUN, key)
                assert (got.pending, got.parked) == (want.pending, want.parked), where
            else:
                job = job_of(op[1], "resumed", True)
                assert await redis.unpark(RUN, job.key, job) == await memory.unpark(RUN, job.key, job), where
        await assert_same_state(client, keys, redis, memory)
        await redis.delete_run(RUN)
        assert await client.keys(f"{prefix}*") == []
    finally:
        await client.aclose()


async def assert_same_state(client: Any, keys: Keys, redis: RedisCoordinationStore,
                            memory: MemoryCoordinationStore) -> None:
    for node in NODES:
        key = job_of(node).key
        assert parse_state(await client.hget(keys.run(RUN), job_field(key))) == memory.job_state(RUN, key), key
        stored = parse_completion(await client.hget(keys.run(RUN), completion_field(key)))
        expected = memory.completion(RUN, key)
        assert (stored and stored.to_dict()) == (expected and expected.to_dict()), key
    for state in ("pending", "parked"):
        got = sorted((p.job.key, p.job.to_dict(), p.leased) for p in await redis.jobs(RUN, state))
        want = sorted((p.job.key, p.job.to_dict(), p.leased) for p in await memory.jobs(RUN, state))
        assert got == want, state


@settings(max_examples=300, deadline=None)  # ~5 s; found each of the Lua faults we planted
@given(ops=operations(), counted_from=st.integers(min_value=0, max_value=45))
def test_redis_coordination_follows_apply_transition(redis_url: str, ops: list[tuple[Any, ...]],
                                                     counted_from: int) -> None:
    asyncio.run(run_both(redis_url, ops, counted_from))
