"""OpenTelemetry traces and metrics for runs (issue 18, item 10; ``pip install "flowcraft-core[otel]"``).

``Telemetry`` is an event listener (``flowcraft.engine.events``): attach the same one to the app the client
and the workers load, ``App(..., listeners=[Telemetry()])``, and configure the OpenTelemetry SDK (exporters)
as usual; by default it uses the global tracer and meter providers.

Traces: a trace per run. The client starting a run opens its root span ``run <blueprint>`` (ended once the
start jobs are enqueued) and, as the events' *job carrier*, puts the root's W3C trace context
(``traceparent``) into the start jobs' payload; the engine carries it into every job routed from them
(successors, retries, a resumed wait, a subflow node's job delivered again when its child run ends). A child
run's root span ``run <child blueprint>`` is a child of the context its subflow node's job carried, so a run
and its subflows form one trace. Each worker, in whatever process, opens one span ``node <id>`` per
node attempt, a child of the run's root: attributes ``flowcraft.run_id``, ``.blueprint_id``, ``.node_id``,
``.visit``, ``.attempt``, ``.worker``; a failed attempt has status ERROR and its error. The trace id is
derived from the run id (``run_context``; the root span's parent is a placeholder derived from it too), so
the jobs no carried context reached (a run started by a client without ``Telemetry``, a ``retry`` from a
node) still put their spans in the run's trace, under that placeholder.

Metrics (instrument names; attributes ``flowcraft.blueprint_id`` and, where it applies, ``flowcraft.node_id``
and ``outcome``/``status``):

* ``flowcraft.jobs`` (counter): node attempts finished, ``outcome`` done or error; its rate is the jobs/s;
* ``flowcraft.node.duration`` (histogram, s): each attempt's latency;
* ``flowcraft.runs`` (counter): runs finished, by ``status``;
* ``flowcraft.dead_letters`` (counter): jobs dead-lettered;
* ``flowcraft.queue.depth`` and ``flowcraft.runs.stalled`` (gauges): what ``await telemetry.sample(backend)``
  last read (call it periodically, e.g. next to the reconciler): the queue's ``depth()`` where the queue can say
  (``Queue.depth``; none is reported when it returns None), and the active runs not updated for
  ``stalled_threshold`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from flowcraft.engine.events import TRACE_PAYLOAD, Event
from flowcraft.errors import ConfigError
from flowcraft.spi import Backend

try:
    from opentelemetry import metrics, trace
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError("flowcraft.otel needs OpenTelemetry", hint='pip install "flowcraft-core[otel]"') from exc

#: open spans are dropped (ended) beyond this many, so a listener never grows without bound
MAX_OPEN_SPANS = 10_000


class Telemetry:
    """Traces and metrics from a process's run and node events (see the module's docstring)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None, *, stalled_threshold: float = 300.0) -> None:
        self.tracer = trace.get_tracer("flowcraft", tracer_provider=tracer_provider)
        meter = metrics.get_meter("flowcraft", meter_provider=meter_provider)
        self.stalled_threshold = stalled_threshold
        self.jobs = meter.create_counter("flowcraft.jobs", unit="{job}",
                                         description="node attempts finished, by outcome (done, error)")
        self.duration = meter.create_histogram("flowcraft.node.duration", unit="s",
                                               description="latency of each node attempt")
        self.runs = meter.create_counter("flowcraft.runs", unit="{run}", description="runs finished, by status")
        self.dead_letters = meter.create_counter("flowcraft.dead_letters", unit="{job}",
                                                 description="jobs moved to the dead-letter store")
        self._queue_depth: int | None = None
        self._stalled: int | None = None
        meter.create_observable_gauge("flowcraft.queue.depth", [self._observe_depth], unit="{job}",
                                      description="jobs waiting in the queue (last sample)")
        meter.create_observable_gauge("flowcraft.runs.stalled", [self._observe_stalled], unit="{run}",
                                      description="active runs not updated for the stalled threshold (last sample)")
        self._propagator = TraceContextTextMapPropagator()
        self._starting: dict[str, Span] = {}
        # open attempt spans by run, node, visit and the asyncio task running the attempt (a node's start and
        # finish events come from one task; a map node's chunks of one visit run in several at once)
        self._attempts: dict[tuple[str, str, int, int], tuple[Span, float]] = {}

    # ------------------------------------------------------------------ traces
    def job_carrier(self, run_id: str, blueprint_id: str,
                    parent: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Open the run's root span and return its trace context, what the run's jobs carry; a child run's
        root is a child of ``parent``, the context its subflow node's job carried."""
        span = self.tracer.start_span(f"run {blueprint_id}", context=self._extract(parent) or run_context(run_id),
                                      kind=SpanKind.PRODUCER,
                                      attributes={"flowcraft.run_id": run_id, "flowcraft.blueprint_id": blueprint_id})
        self._keep(self._starting, run_id, span)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def parent(self, event: Event) -> Context:
        """The context a node span of ``event`` starts in: the carried trace, else the run's (``run_context``)."""
        return self._extract(event.data.get(TRACE_PAYLOAD)) or run_context(event.run_id)

    def _extract(self, carried: Any) -> Context | None:
        """The context of a carried W3C trace context, None when nothing (usable) was carried."""
        if isinstance(carried, Mapping) and carried.get("traceparent"):
            return self._propagator.extract({str(k): str(v) for k, v in carried.items()})
        return None

    def __call__(self, event: Event) -> None:
        name = event.name
        blueprint = {"flowcraft.blueprint_id": event.blueprint_id}
        if name == "run:start":
            span = self._starting.pop(event.run_id, None)
            if span is not None:
                span.end()
        elif name == "node:start" and event.node_id is not None:
            visit = int(event.data.get("visit", 0))
            span = self.tracer.start_span(
                f"node {event.node_id}", context=self.parent(event), kind=SpanKind.CONSUMER,
                attributes={"flowcraft.run_id": event.run_id, **blueprint, "flowcraft.node_id": event.node_id,
                            "flowcraft.visit": visit, "flowcraft.attempt": int(event.data.get("attempt", 1)),
                            "flowcraft.worker": str(event.data.get("worker") or "")})
            self._keep(self._attempts, (event.run_id, event.node_id, visit, _task()), (span, time.monotonic()))
        elif name in ("node:finish", "node:error") and event.node_id is not None:
            opened = self._attempts.pop((event.run_id, event.node_id, int(event.data.get("visit", 0)), _task()),
                                        None)
            attributes = {**blueprint, "flowcraft.node_id": event.node_id,
                          "outcome": "done" if name == "node:finish" else "error"}
            self.jobs.add(1, attributes)
            if opened is not None:
                span, started = opened
                self.duration.record(time.monotonic() - started, attributes)
                if name == "node:error":
                    error = str(event.data.get("error", ""))
                    span.set_status(Status(StatusCode.ERROR, error))
                    span.add_event("exception", {"exception.message": error})
                span.end()
        elif name == "run:finish":
            self.runs.add(1, {**blueprint, "status": str(event.data.get("status", ""))})
        elif name == "job:dead_letter":
            self.dead_letters.add(1, blueprint)

    @staticmethod
    def _keep(spans: dict[Any, Any], key: Any, value: Any) -> None:
        if len(spans) >= MAX_OPEN_SPANS:  # events of spans that never ended (a crashed start): drop the oldest
            oldest = next(iter(spans))
            dropped = spans.pop(oldest)
            (dropped[0] if isinstance(dropped, tuple) else dropped).end()
        spans[key] = value

    # ------------------------------------------------------------------ sampled gauges
    async def sample(self, backend: Backend, *, limit: int = 1000) -> tuple[int | None, int]:
        """Read the queue depth (``Queue.depth``: None where the queue cannot say) and the number of stalled runs
        (up to ``limit``) for the gauges; returns both."""
        self._queue_depth = await backend.queue.depth()
        stalled = await backend.status.stalled(time.time() - self.stalled_threshold, limit)
        self._stalled = len(stalled)
        return self._queue_depth, self._stalled

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self._queue_depth is None else [Observation(self._queue_depth)]

    def _observe_stalled(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self._stalled is None else [Observation(self._stalled)]


def run_context(run_id: str) -> Context:
    """The run's trace: its id (and a placeholder parent span id) derived from the run id, so every span of
    a run is in one trace whatever started its jobs (a client without ``Telemetry``, ``retry`` from a node)."""
    digest = hashlib.sha256(run_id.encode()).digest()
    derived = SpanContext(int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1,
                          is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(derived))


def _task() -> int:
    try:
        return id(asyncio.current_task())
    except RuntimeError:  # called outside an event loop
        return 0


__all__ = ["Telemetry", "run_context"]
