"""flowcraft_redis.handover without a server: the set member's encoding, the receipt, what the commit script is
given, and that a Redis Cluster gets no hand-over (the member the Lua writes is checked against a real Redis in
tests-integration/test_rabbitmq_handover.py)."""

from __future__ import annotations

import json
import re
import time

import pytest

from flowcraft.spi import Begin, Job
from flowcraft_redis import make_any_client, make_client
from flowcraft_redis._client import dumps
from flowcraft_redis.handover import (
    MAX_SWEEP_INTERVAL,
    HandedReceipt,
    Handover,
    decode_member,
    encode_member,
)

TRICKY = ["n", "ü/x y", "ключ", '"quoted" a b', "a\\b", "\ud83d\ude00"]


@pytest.mark.parametrize("node", TRICKY)
def test_a_member_round_trips_the_job_as_the_queue_encodes_it(node: str) -> None:
    job = Job("run 1", "bp", node, input={"k": [1, None, "ü"]}, has_input=True)
    body = dumps(job.to_dict())
    member = encode_member("0123456789abcdef", 3, body)
    assert member.startswith(b"0123456789abcdef.3 ")
    unique, raw = decode_member(member)
    assert unique == b"0123456789abcdef.3"
    assert Job.from_dict(json.loads(raw.decode("utf-8", "surrogatepass"))) == job
    assert HandedReceipt(member).body == raw


def test_members_of_one_job_differ_by_commit_token_and_position() -> None:
    body = dumps(Job("r", "bp", "n").to_dict())
    assert len({encode_member("a" * 16, 1, body), encode_member("b" * 16, 1, body),
                encode_member("a" * 16, 2, body)}) == 3


@pytest.mark.parametrize("member", [b"", b"nospace", b"token {}", b"tok.1 ", b" {}"])
def test_what_is_not_a_member_says_so(member: bytes) -> None:
    with pytest.raises(ValueError, match="not a handed job"):
        decode_member(member)


def test_the_dispatcher_hands_over_without_queueing_or_acking() -> None:
    handover = Handover(make_client("redis://127.0.0.1:1/0"), queue_name="jobs", key_prefix="p:",
                        visibility_timeout=20)
    assert (handover.queues, handover.continues, handover.acks) == (False, True, False)
    assert handover.keys == ("p:handover:jobs",)
    now = time.time()
    deadline, token = handover.args(3, now)
    assert float(deadline) == pytest.approx(now + 20) and re.fullmatch(r"[0-9a-f]{16}", token)
    assert handover.args(1, now)[1] != token  # one token per commit
    assert handover.sweep_interval == MAX_SWEEP_INTERVAL
    assert Handover(make_client("redis://127.0.0.1:1/0"), queue_name="jobs", key_prefix="p:",
                    visibility_timeout=2).sweep_interval == 0.5


def test_a_handed_delivery_is_a_first_delivery_with_the_lease_and_no_record() -> None:
    handover = Handover(make_client("redis://127.0.0.1:1/0"), queue_name="jobs", key_prefix="p:",
                        visibility_timeout=5)
    job = Job("r", "bp", "n")
    member = encode_member("f" * 16, 1, dumps(job.to_dict()))
    begin = Begin(lease=True, state="pending", completion=None)
    delivery = handover.delivery(job, member, "w1", None, begin)  # type: ignore[arg-type]  # the Lua's reply
    assert isinstance(delivery.receipt, HandedReceipt) and delivery.receipt.member == member
    assert not delivery.receipt.settled
    assert delivery.deliveries == 1 and delivery.record is None and delivery.begin is begin


def test_bad_visibility_and_a_cluster_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Handover(make_client("redis://127.0.0.1:1/0"), queue_name="q", key_prefix="p:", visibility_timeout=0)
    cluster = make_any_client("redis+cluster://127.0.0.1:1")
    assert not Handover.supported(cluster) and Handover.supported(make_client("redis://127.0.0.1:1/0"))
    with pytest.raises(ValueError, match="Redis Cluster"):
        Handover(cluster, queue_name="q", key_prefix="p:", visibility_timeout=5)
