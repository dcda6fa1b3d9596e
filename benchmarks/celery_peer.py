# mypy: disable-error-code="import-untyped,untyped-decorator"
"""The Celery peer: the same workloads as Celery canvases, on the same Redis.

* ``chain10``  = ``chain(step(0), step, ... step)`` (10 tasks);
* ``diamond8`` = ``chain(step(0), chord(group(8 x step), join), step)`` (11 tasks).

Workers: ``celery -A benchmarks.celery_peer worker ...`` (started by the harness). The broker and the result
backend are both ``$FLOWCRAFT_BENCH_CELERY_URL`` (the harness points it at another database number of the
Redis the flowcraft rq backend uses). Tasks are plain functions doing the same trivial work as the flowcraft
nodes. ``FLOWCRAFT_BENCH_CELERY_ACKS_LATE=1`` switches to ``task_acks_late`` (ack after the task ran, closer to
flowcraft's at-least-once delivery); the default is Celery's own default (ack on receipt).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature
from celery.signals import worker_ready

URL_ENV = "FLOWCRAFT_BENCH_CELERY_URL"
ACKS_LATE_ENV = "FLOWCRAFT_BENCH_CELERY_ACKS_LATE"
QUEUE = "flowcraft-bench-celery"
READY_MARKER = "celery worker ready"

_url = os.environ.get(URL_ENV, "redis://127.0.0.1:6379/1")

app = Celery("flowcraft_bench", broker=_url, backend=_url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    task_acks_late=os.environ.get(ACKS_LATE_ENV) == "1",
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


def configure(url: str) -> None:
    """Point this process's app (the harness, a client) at ``url``; call it before the app is used."""
    app.conf.update(broker_url=url, result_backend=url)


@app.task(name="bench.step")
def step(value: Any = None) -> int:
    return value + 1 if isinstance(value, int) else 1


@app.task(name="bench.join")
def join(values: Any) -> int:
    return len(values) if isinstance(values, list) else 1


def chain10() -> Signature:
    return chain(step.s(0), *(step.s() for _ in range(9)))


def diamond8() -> Signature:
    return chain(step.s(0), chord(group(step.s() for _ in range(8)), join.s()), step.s())


#: workload name -> (canvas factory, tasks per run, expected final result)
CANVASES: dict[str, tuple[Callable[[], Signature], int, int]] = {
    "chain10": (chain10, 10, 10),
    "diamond8": (diamond8, 11, 9),
}


@worker_ready.connect
def _announce_ready(**_: Any) -> None:
    """The harness waits for this line in the worker's log before it measures anything."""
    print(READY_MARKER, flush=True, file=sys.stdout)
