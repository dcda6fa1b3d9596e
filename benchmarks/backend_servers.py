"""Backends whose servers the harness starts and whose raw queue floor it measures beside each trial
(``python -m benchmarks --backend rabbitmq|azure|kafka``).

A :class:`BackendServers` subclass (one module per backend: ``rabbitmq_servers``, ``azure_servers``,
``kafka_servers``) says

* which servers the backend needs (:class:`ServerSpec`: a ``tests-integration/servers`` class and the backend
  options a started one provides); a server whose first option is in ``--backend-options`` is not started;
* the backend options of a trial that starts from empty state (:meth:`BackendServers.fresh_options`);
* the raw floor (:meth:`BackendServers.floor`): the chain workload (``runs`` chains, at least the in-flight
  window, of 10 no-op messages, each handled message sends its successor) through the queue service with its
  own client library alone, with at most as many messages in flight as the flowcraft workers of the trial may
  hold (processes x concurrency).
  The harness measures it right after each trial (its workers stopped), on the same servers, so the ratio
  compares figures taken seconds apart;
* how the worker processes count their requests to each service (:attr:`BackendServers.hook`, a
  ``benchmarks.worker --hook``): the hook adds to :data:`COUNTS` and prints the counts whenever the worker gets
  SIGUSR1, so the harness reads them right before and right after the throughput phase
  (:class:`WorkerCounters`). Every hook also counts the worker's Redis round trips (all three backends
  coordinate in Redis); the harness reads that Redis's ``INFO`` as well (workers and client together).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

#: what a worker's hook counted so far, by "service operation" (this process only)
COUNTS: collections.Counter[str] = collections.Counter()
#: counters kept elsewhere (e.g. a client library's own statistics), read at each report
GAUGES: list[Callable[[], dict[str, int]]] = []
COUNTS_MARKER = "flowcraft worker counts "
REQUEST_PREFIX = "req:"  # the worker-side counts in a harness counter snapshot


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server of a backend: ``module``.``name`` of ``tests-integration/servers`` and the backend options
    a started one provides (``options(server)``; ``option_names`` are the keys it returns)."""

    module: str
    name: str
    option_names: tuple[str, ...]
    options: Callable[[Any], dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)


class BackendServers:
    """The servers of one harness run, the per-trial options, the raw floor and the worker's counting hook."""

    backend: ClassVar[str]
    specs: ClassVar[tuple[ServerSpec, ...]]
    hook: ClassVar[str]  # MODULE:FUNCTION for ``benchmarks.worker --hook``

    def __init__(self, urls: dict[str, Any]) -> None:
        self.urls = urls

    @classmethod
    def start(cls, given: dict[str, Any], stack: contextlib.ExitStack, server_pids: list[int],
              server_class: Callable[[str, str], Any], start: Callable[[Any], Any],
              say: Callable[[str], None]) -> Self:
        """Start the servers whose options are not in ``given`` (the user's ``--backend-options``)."""
        urls: dict[str, Any] = {}
        for spec in cls.specs:
            if given.get(spec.option_names[0]):
                urls.update({name: given[name] for name in spec.option_names if name in given})
                continue
            server = start(server_class(spec.module, spec.name)(**spec.kwargs))
            stack.callback(server.close)
            urls.update(spec.options(server))
            server_pids.append(server.pid)
            say(f"started {server.name} pid {server.pid} on port {server.port}")
        return cls(urls)

    @property
    def redis_url(self) -> str:
        return str(self.urls["redis_url"])

    def fresh_options(self, tag: str) -> dict[str, Any]:
        raise NotImplementedError

    async def floor(self, chains: int, in_flight: int, hops: int = 10) -> float:
        """Messages per second of the raw chain workload (see the module docstring)."""
        raise NotImplementedError


def safe_name(tag: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in tag).lower()


def registered(backend: str) -> type[BackendServers] | None:
    """The :class:`BackendServers` of ``backend``, or None when the harness does not start its servers."""
    if backend == "rabbitmq":
        from benchmarks.rabbitmq_servers import RabbitMqServers

        return RabbitMqServers
    if backend == "azure":
        from benchmarks.azure_servers import AzureServers

        return AzureServers
    if backend == "kafka":
        from benchmarks.kafka_servers import KafkaServers

        return KafkaServers
    return None


# --------------------------------------------------------------------------- counting in the worker process


def report_on_signal() -> None:
    """In the worker (inside its event loop): count its Redis requests too (:func:`count_redis_requests`) and
    print :data:`COUNTS` and the gauges on every SIGUSR1."""
    count_redis_requests()

    def report() -> None:
        counts = dict(COUNTS)
        for gauge in GAUGES:
            counts.update(gauge())
        print(COUNTS_MARKER + json.dumps(counts), flush=True)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)


_redis_counted = False


def count_redis_requests() -> None:
    """Count every request this process writes to a Redis server as "redis round trips": redis-py's asyncio
    connections send one packed write per command, per pipeline and per script call."""
    global _redis_counted
    if _redis_counted:
        return
    from redis.asyncio.connection import AbstractConnection

    send = AbstractConnection.send_packed_command

    async def counted_send(self: Any, *args: Any, **kwargs: Any) -> None:
        COUNTS["redis round trips"] += 1
        await send(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counted_send  # type: ignore[method-assign]
    _redis_counted = True


def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a coroutine function) adding one to ``COUNTS[name]`` per call."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        COUNTS[name] += 1
        return await method(*args, **kwargs)

    return wrapper


class WorkerCounters:
    """The counts the worker processes print on SIGUSR1 (their logs), summed; keys get :data:`REQUEST_PREFIX`."""

    def __init__(self, processes: Sequence[tuple[Any, Path]], timeout: float = 10.0) -> None:
        self.processes = list(processes)
        self.timeout = timeout

    def snapshot(self) -> dict[str, int]:
        seen = [self._reports(path) for _, path in self.processes]
        for process, _ in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"worker pid {process.pid} exited with code {process.returncode}")
            os.kill(process.pid, signal.SIGUSR1)
        total: collections.Counter[str] = collections.Counter()
        deadline = time.monotonic() + self.timeout
        for (process, path), before in zip(self.processes, seen, strict=True):
            while len(reports := self._reports(path)) <= len(before):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"worker pid {process.pid} did not report its counts")
                time.sleep(0.01)
            total.update(json.loads(reports[-1]))
        return {REQUEST_PREFIX + name: n for name, n in total.items()}

    @staticmethod
    def _reports(path: Path) -> list[str]:
        text = path.read_text("utf-8", "replace")
        return [line.split(COUNTS_MARKER, 1)[1] for line in text.splitlines() if COUNTS_MARKER in line]
