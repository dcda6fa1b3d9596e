"""OpenTelemetry (issue 18, item 10): a run started in this process and executed by two real `flowcraft worker`
processes on sqlite forms one trace: the client's root span and, under it, one span per node attempt from
both workers (the trace context travels in the jobs' payload); a failed attempt is an ERROR span; metrics
count jobs, latencies and finished runs. Each process exports to OpenTelemetry's in-memory exporter (the
workers write theirs to a file when they exit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flowcraft import App, Event
from flowcraft.client import Client
from flowcraft.otel import Telemetry, run_context
from flowcraft.plugins import registry

APP_SOURCE = '''
import asyncio, atexit, json, os
from flowcraft import App, Flow
from flowcraft.otel import Telemetry, run_context

def build(telemetry):
    async def left(ctx):
        if ctx.attempt < 2:
            raise ConnectionError("left flaked")
        await asyncio.sleep(0.4)
        return "L"

    async def right(ctx):
        await asyncio.sleep(0.4)
        return "R"

    flow = Flow("traced").node("fork", lambda ctx: ctx.input).node("left", left, retries=2, retry_delay=0.01)
    flow.node("right", right).node("join", lambda ctx: sorted(ctx.input.values()))
    flow.edge("fork", "left").edge("fork", "right").edge("left", "join").edge("right", "join")
    return App(flows=[flow], listeners=[telemetry])

def worker_app():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def dump():
        spans = [{"name": s.name, "trace_id": s.context.trace_id, "span_id": s.context.span_id,
                  "parent": s.parent.span_id if s.parent else None, "status": s.status.status_code.name,
                  "attributes": dict(s.attributes or {}), "pid": os.getpid()} for s in exporter.get_finished_spans()]
        with open(os.path.join(os.environ["OTEL_TEST_DIR"], f"spans-{os.getpid()}.json"), "w") as out:
            json.dump(spans, out)

    atexit.register(dump)
    return build(Telemetry(tracer_provider=provider))
'''


def test_one_trace_across_two_worker_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "traced_app.py").write_text(APP_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import traced_app  # type: ignore[import-not-found]

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCRAFT_")}
    env.update(PYTHONPATH=str(tmp_path), OTEL_TEST_DIR=str(tmp_path))
    db = str(tmp_path / "runs.db")
    flowcraft = str(Path(sys.executable).parent / "flowcraft")
    workers = []
    for index in range(2):
        ready = tmp_path / f"ready-{index}"
        workers.append((ready, subprocess.Popen(
            [flowcraft, "worker", "--app", "traced_app:worker_app", "-b", "sqlite", "-o", f"path={db}",
             "-c", "1", "--ready-file", str(ready)], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=(tmp_path / f"worker-{index}.log").open("wb"))))
    try:
        deadline = time.monotonic() + 60
        while not all(ready.exists() for ready, _ in workers):
            assert time.monotonic() < deadline, [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)]
            assert all(p.poll() is None for _, p in workers)
            time.sleep(0.05)

        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader]))

        async def start() -> tuple[str, Any, tuple[int | None, int]]:
            async with Client(registry().build("sqlite", {"path": db}), traced_app.build(telemetry)) as client:
                result = await client.run("traced", 1, timeout=60)
                return result.run_id, result.output, await telemetry.sample(client.backend)

        import asyncio
        run_id, output, sampled = asyncio.run(start())
        assert output == ["L", "R"]
        assert sampled == (0, 0)  # nothing queued, nothing stalled
    finally:
        for _, process in workers:
            process.send_signal(signal.SIGTERM)
        for _, process in workers:
            process.wait(30)

    (root,) = exporter.get_finished_spans()
    assert root.name == "run traced" and root.attributes is not None and root.attributes["flowcraft.run_id"] == run_id
    spans = [span for path in tmp_path.glob("spans-*.json") for span in json.loads(path.read_text())]
    assert {span["trace_id"] for span in spans} == {root.context.trace_id}  # one trace, every process
    assert {span["parent"] for span in spans} == {root.context.span_id}
    assert len({span["pid"] for span in spans}) == 2  # left and right ran at once, one per worker
    by_node: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_node.setdefault(span["attributes"]["flowcraft.node_id"], []).append(span)
    assert sorted(by_node) == ["fork", "join", "left", "right"]
    left = sorted(by_node["left"], key=lambda s: s["attributes"]["flowcraft.attempt"])
    assert [s["status"] for s in left] == ["ERROR", "UNSET"]  # the retry carries the trace too

    # the client's own metrics: only the run events it saw (the workers count their jobs)
    names = {metric.name for rm in (reader.get_metrics_data().resource_metrics or [])  # type: ignore[union-attr]
             for sm in rm.scope_metrics for metric in sm.metrics}
    assert {"flowcraft.queue.depth", "flowcraft.runs.stalled"} <= names


async def test_metrics_and_spans_in_one_process(tmp_path: Path) -> None:
    """Jobs, latency, runs and dead letters as OTel metrics; no carrier, no payload: nothing added to jobs."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader]))
    for event in (Event("node:start", "r1", "bp", "a", {"visit": 0, "attempt": 1, "worker": "w"}),
                  Event("node:finish", "r1", "bp", "a", {"visit": 0}),
                  Event("node:start", "r1", "bp", "b", {"visit": 0, "attempt": 1, "worker": "w"}),
                  Event("node:error", "r1", "bp", "b", {"visit": 0, "error": "ValueError: x"}),
                  Event("job:dead_letter", "r1", "bp", "b", {"reason": "x"}),
                  Event("run:finish", "r1", "bp", None, {"status": "failed"})):
        telemetry(event)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["node a", "node b"]
    # without a carried context: the trace derived from the run id, the same the run's root span has
    derived = trace.get_current_span(run_context("r1")).get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {derived}
    values: dict[str, Any] = {}
    for rm in reader.get_metrics_data().resource_metrics:  # type: ignore[union-attr]
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                values[metric.name] = list(metric.data.data_points)
    assert sum(p.value for p in values["flowcraft.jobs"]) == 2
    assert sum(p.count for p in values["flowcraft.node.duration"]) == 2
    assert sum(p.value for p in values["flowcraft.dead_letters"]) == 1
    assert [dict(p.attributes)["status"] for p in values["flowcraft.runs"]] == ["failed"]


def test_without_a_carrier_jobs_carry_nothing() -> None:
    app = App(listeners=[lambda event: None])
    from flowcraft import Engine
    from flowcraft.backends.memory import memory_backend
    assert Engine(app, memory_backend()).events.carriers == []


async def test_a_resumed_wait_and_its_successors_stay_in_the_run_trace() -> None:
    from flowcraft import Flow, FlowRuntime

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider, meter_provider=MeterProvider())
    flow = Flow("review").node("draft", lambda ctx: "d").wait("approve").node("ship", lambda ctx: "shipped")
    flow.edge("draft", "approve").edge("approve", "ship")
    async with FlowRuntime(app=App(flows=[flow], listeners=[telemetry])) as runtime:
        paused = await runtime.run("review", None)
        assert paused.status == "awaiting"
        done = await runtime.resume(paused, output="ok")
        assert done.status == "completed"
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "run review"]
    nodes = {s.name: s for s in spans if s.name.startswith("node ")}
    assert {"node draft", "node ship"} <= set(nodes)
    assert {s.context.trace_id for s in nodes.values()} == {root.context.trace_id}
    assert {s.parent.span_id for s in nodes.values() if s.parent} == {root.context.span_id}


async def test_map_chunks_stay_in_the_run_trace() -> None:
    from flowcraft import Flow, FlowRuntime

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider, meter_provider=MeterProvider())
    flow = Flow("fan").node("items", lambda ctx: [1, 2, 3, 4]).map("double", lambda ctx: ctx.input * 2,
                                                                    max_concurrency=2)
    flow.node("total", lambda ctx: sum(ctx.input)).edge("items", "double").edge("double", "total")
    async with FlowRuntime(app=App(flows=[flow], listeners=[telemetry])) as runtime:
        done = await runtime.run("fan", None)
        assert done.status == "completed" and done.output == 20
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "run fan"]
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert {"node items", "node double", "node total"} <= {s.name for s in spans}
    assert len([s for s in spans if s.name == "node double"]) >= 4  # each chunk's attempt, all ended
    assert not telemetry._attempts


async def test_a_run_retried_from_a_node_stays_in_its_trace() -> None:
    from flowcraft import Flow, FlowRuntime

    broken = {"yes"}

    def check(ctx: Any) -> str:
        if broken:
            raise ValueError("broken")
        return "fixed"

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider, meter_provider=MeterProvider())
    flow = Flow("again").node("first", lambda ctx: 1).node("check", check).edge("first", "check")
    async with FlowRuntime(app=App(flows=[flow], listeners=[telemetry])) as runtime:
        failed = await runtime.run("again", None)
        assert failed.status == "failed"
        broken.clear()
        await runtime.client.retry(failed.run_id, "check")
        assert (await runtime.client.wait(failed.run_id, 30)).status == "completed"
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "run again"]
    checks = [s for s in spans if s.name == "node check"]
    assert len(checks) == 2 and {s.context.trace_id for s in spans} == {root.context.trace_id}


async def test_a_subflow_and_its_redelivered_parent_job_stay_under_the_run_root() -> None:
    """The subflow node's job is delivered again when its child run ends (``notify_parent``): it and the
    nodes routed from it stay under the run's root span, and the child run's root span hangs under the
    parent's trace context, so the whole run, child included, is one trace."""
    from flowcraft import Flow, FlowRuntime

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider, meter_provider=MeterProvider())
    child = Flow("inner").node("c1", lambda ctx: 1).node("c2", lambda ctx: 2).edge("c1", "c2")
    parent = Flow("outer").node("p1", lambda ctx: 0).subflow("sub", "inner").node("p2", lambda ctx: ctx.input)
    parent.edge("p1", "sub").edge("sub", "p2")
    async with FlowRuntime(app=App(flows=[child, parent], listeners=[telemetry])) as runtime:
        done = await runtime.run("outer", None)
        assert done.status == "completed" and done.output == 2
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "run outer"]
    (inner,) = [s for s in spans if s.name == "run inner"]
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}  # one trace, the child run's too
    assert inner.parent is not None and inner.parent.span_id == root.context.span_id
    parents = {s.name: s.parent.span_id if s.parent else None for s in spans if s.name.startswith("node ")}
    assert parents == {"node p1": root.context.span_id, "node p2": root.context.span_id,  # p2: routed from the
                       "node c1": inner.context.span_id, "node c2": inner.context.span_id}  # redelivered sub job
