"""The chaos verifier: correct runs (from the in-process engine) pass, and every kind of wrong run, log or
status history it exists to catch is flagged."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flowcraft import FlowRuntime
from flowcraft.chaos import ChaosOptions, ChaosReport, Execution, ObservedRun, PlannedRun, expect, verify_run
from flowcraft.chaos.harness import ChaosError, run_chaos
from flowcraft.chaos.verify import SHAPES, by_run, child_run_id, duplicate_executions, read_log
from flowcraft.chaos.workflows import LOG_ENV, MAP_ITEMS, PREFIX, app


def execution(run_id: str, node: str, input: Any, *, visit: int = 0, attempt: int = 1, item: int | None = None,
              t: float = 1000.0) -> Execution:
    return Execution(run_id, node, visit, attempt, item, 1, t, input)


def completed(run: PlannedRun, winner: str | None = None) -> tuple[ObservedRun, list[Execution]]:
    """A correct completed run, built from the expectation: what a right engine leaves behind."""
    expected = expect(run, winner)
    context = {**expected.context, **{f"_outputs.{k}": v for k, v in expected.outputs.items()}}
    if expected.terminal is not None:
        context["_result"] = expected.outputs[expected.terminal]
    executions = [execution(run.run_id, node, value, visit=visit, t=1000.0 + 2.0 * position)  # in order
                  for position, ((node, visit), value) in enumerate(expected.inputs.items())]
    for node, items in expected.map_items.items():
        executions += [execution(run.run_id, node, item, item=index % 4) for index, item in enumerate(items)]
    for node, attempts in expected.required_attempts.items():
        first = next(e for e in executions if e.node_id == node)
        executions += [replace(first, attempt=attempt) for attempt in range(2, attempts + 1)]
    observed = ObservedRun(expected.status, dict(expected.outputs), context,
                           [{"message": "RuntimeError: chaos", "node_id": "bad"}] if expected.status == "failed"
                           else [], [("running", 1.0), (expected.status, 2.0)])
    return observed, executions


def details(findings: list[Any]) -> str:
    return " | ".join(f.detail for f in findings)


# ---------------------------------------------------------------------------------------------- correct runs
async def test_runs_of_the_in_process_engine_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "executions.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))
    plan: list[PlannedRun] = []
    async with FlowRuntime(app=app) as runtime:
        for index, shape in enumerate(s for s in SHAPES for _ in range(2)):
            run = PlannedRun(await runtime.start(PREFIX + shape, {"n": 11 + index}), shape, 11 + index)
            plan.append(run)
            if shape == "cancel":
                await asyncio.sleep(0.2)
                assert await runtime.cancel(run.run_id)
                run.cancelled_at = time.time()
            result = await runtime.wait(run.run_id, timeout=20)
            if shape == "wait":
                assert result.status == "awaiting"
                await runtime.resume(run.run_id, action=run.resume_action, output=run.resume_output, timeout=20)
        observed = {run.run_id: await runtime.status(run.run_id) for run in plan}
        children = {}
        for run in plan:
            result = observed[run.run_id]
            child_id = child_run_id(ObservedRun.of(result))
            if child_id is not None:
                children[run.run_id] = await runtime.status(child_id)
    executions, unreadable = read_log(log)
    assert unreadable == 0
    grouped = by_run(executions)
    for run in plan:
        result = observed[run.run_id]
        seen = ObservedRun.of(result)
        child = None
        if run.run_id in children:
            child_result = children[run.run_id]
            child = (PlannedRun(child_result.run_id, "child", run.n),
                     ObservedRun.of(child_result),
                     grouped.get(child_result.run_id, []))
        assert verify_run(run, seen, grouped.get(run.run_id, []), child) == [], run.shape
    assert {run.shape for run in plan} == set(SHAPES)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s not in ("cancel", "subflow")])
def test_a_correct_run_passes(shape: str) -> None:
    run = PlannedRun("r1", shape, 7)
    observed, executions = completed(run, "p3")
    assert verify_run(run, observed, executions) == []


# ---------------------------------------------------------------------------------------------- wrong runs
def test_a_map_successor_routed_one_chunk_is_wrong() -> None:
    run = PlannedRun("r1", "map", 5)
    observed, executions = completed(run)
    chunk = [25, 36, 49]
    observed.outputs["total"] = sum(chunk)
    executions.append(execution("r1", "total", chunk, t=999.0))
    found = verify_run(run, observed, executions)
    assert {f.kind for f in found} == {"wrong"}
    assert "total (visit 0, attempt 1, pid 1) ran with input [25, 36, 49]" in details(found)
    expected = sum((5 + i) ** 2 for i in range(MAP_ITEMS))  # the squares of the n=5 run's items
    assert f"outputs differ: total: 110 (expected {expected})" in details(found)


def test_a_map_successor_routed_the_placeholder_is_wrong() -> None:
    run = PlannedRun("r1", "map", 5)
    observed, executions = completed(run)
    executions.append(execution("r1", "total", None))
    assert "ran with input None" in details(verify_run(run, observed, executions))


def test_a_node_on_the_skipped_branch_that_ran_is_wrong() -> None:
    run = PlannedRun("r1", "diamond", 4)  # even: b is skipped
    observed, executions = completed(run)
    executions.append(execution("r1", "b", 4))
    assert "b (visit 0) ran, but must never run" in details(verify_run(run, observed, executions))


def test_an_all_join_with_a_partial_input_is_wrong() -> None:
    run = PlannedRun("r1", "diamond", 3)
    observed, executions = completed(run)
    executions.append(execution("r1", "j", {"c": 103}))
    assert "j (visit 0, attempt 1, pid 1) ran with input {'c': 103}" in details(verify_run(run, observed, executions))


def test_an_any_join_that_fired_twice_is_wrong() -> None:
    run = PlannedRun("r1", "any5", 2)
    observed, executions = completed(run, "p1")
    executions.append(execution("r1", "j", {"p4": 24}, t=2000.0))
    assert "j (visit 0, attempt 1, pid 1) ran with input {'p4': 24}, expected {'p1': 21}" in details(
        verify_run(run, observed, executions))


def test_a_loop_pass_too_many_and_a_restored_counter_are_wrong() -> None:
    run = PlannedRun("r1", "loop", 2)
    observed, executions = completed(run)
    executions.append(execution("r1", "body", 6, visit=3))
    observed.context["count"] = 4
    found = details(verify_run(run, observed, executions))
    assert "body (visit 3) ran, but must never run" in found
    assert "context differ: count: 4 (expected 3)" in found


def test_vanished_outputs_and_context_writes_are_wrong() -> None:
    run = PlannedRun("r1", "subflow", 3)
    observed, executions = completed(run)
    del observed.outputs["sub"]
    del observed.context["child_total"]
    found = details(verify_run(run, observed, executions))
    assert "sub: <missing> (expected 7)" in found
    assert "child_total: <missing> (expected 7)" in found
    assert "the completed parent links no child run" in found


def test_a_wrong_child_run_makes_its_parent_wrong() -> None:
    run, child = PlannedRun("r1", "subflow", 3), PlannedRun("r1/sub#0.1", "child", 3)
    observed, executions = completed(run)
    child_observed, child_executions = completed(child)
    child_observed.context["total"] = 6
    found = verify_run(run, observed, executions, (child, child_observed, child_executions))
    assert "child r1/sub#0.1: context differ: total: 6 (expected 7)" in details(found)


def test_a_falsely_failed_run_is_wrong() -> None:
    run = PlannedRun("r1", "diamond", 4)
    observed, executions = completed(run)
    observed.status = "failed"
    observed.errors = [{"message": "run stalled with no pending jobs (its start was interrupted)", "node_id": None}]
    found = verify_run(run, observed, executions)
    assert "status failed, expected completed (errors: run stalled" in details(found)


def test_a_retry_that_did_not_go_through_the_queue_is_wrong() -> None:
    run = PlannedRun("r1", "retry", 4)
    observed, executions = completed(run)
    executions = [e for e in executions if e.attempt != 2]
    assert "flaky: attempts [2] never ran" in details(verify_run(run, observed, executions))


def test_an_extra_attempt_is_wrong() -> None:
    run = PlannedRun("r1", "fail", 4)
    observed, executions = completed(run)
    executions.append(execution("r1", "bad", 4, attempt=3))
    assert "bad ran attempt 3 (at most 2)" in details(verify_run(run, observed, executions))


def test_a_second_final_status_is_a_second_publication() -> None:
    run = PlannedRun("r1", "fail", 4)
    observed, executions = completed(run)
    observed.history = [("running", 1.0), ("failed", 2.0), ("completed", 3.0)]
    found = details(verify_run(run, observed, executions))
    assert "final status published more than once: ('failed', 2.0) then [('completed', 3.0)]" in found


def test_a_sleep_that_ended_early_is_wrong() -> None:
    run = PlannedRun("r1", "sleep", 4)
    observed, executions = completed(run)
    executions = [replace(e, t=1000.5) if e.node_id == "woke" else replace(e, t=1000.0) for e in executions]
    assert "woke ran 0.500 s after the start" in details(verify_run(run, observed, executions))


def test_work_after_a_cancel_is_wrong() -> None:
    run = PlannedRun("r1", "cancel", 4, cancelled_at=1000.0)
    observed = ObservedRun("cancelled", {"s": 4}, {"n": 4, "_outputs.s": 4})
    executions = [execution("r1", "s", {"n": 4}, t=999.0), execution("r1", "z1", 4, t=999.5),
                  execution("r1", "z2", 4, t=1001.5)]
    assert "z2#0x1 started more than 1.0 s after the run was cancelled" in details(
        verify_run(run, observed, executions))
    assert verify_run(run, observed, executions[:2]) == []
    before_start = ObservedRun("cancelled", {}, {})  # cancelled before its first node ran
    assert verify_run(run, before_start, []) == []
    assert "context {'n': 5} differs" in details(verify_run(run, ObservedRun("cancelled", {}, {"n": 5}), []))


def test_lost_and_stuck_runs() -> None:
    run = PlannedRun("r1", "loop", 4)
    assert [f.kind for f in verify_run(run, ObservedRun(None), [])] == ["lost"]
    stuck = verify_run(run, ObservedRun("running"), [execution("r1", "s", {"n": 4})])
    assert [(f.kind, f.detail) for f in stuck] == [
        ("stuck", "still running; executed: s#0x1; status history: not seen")]
    refused = replace(PlannedRun("r2", "wait", 4), harness_error="InvalidStateError: run 'r2' is not awaiting")
    awaiting = ObservedRun("awaiting", history=[("running", 10.0), ("awaiting", 10.5), ("running", 11.0),
                                                ("awaiting", 11.25)])
    [finding] = verify_run(refused, awaiting, [])
    assert finding.kind == "stuck"
    assert finding.detail == ("still awaiting; executed: nothing; status history: running at +0.00 s, awaiting at "
                              "+0.50 s, running at +1.00 s, awaiting at +1.25 s; the harness was refused: "
                              "InvalidStateError: run 'r2' is not awaiting")


# ---------------------------------------------------------------------------------------------- log, report
def test_the_log_counts_duplicates_and_unreadable_lines(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    line = json.dumps({"run_id": "r", "node_id": "a", "visit": 0, "attempt": 1, "item": None, "pid": 3,
                       "t": 1.0, "input": 1})
    retry = line.replace('"attempt": 1', '"attempt": 2')
    log.write_text("\n".join([line, line, retry, '{"run_id": "r", "node']) + "\n")
    executions, unreadable = read_log(log)
    assert unreadable == 1
    assert duplicate_executions(executions) == 1


def test_the_report_line_and_verdict(tmp_path: Path) -> None:
    report = ChaosReport("sqlite", 60, 21, 0, 0, 1, 3, 37.4, 0, 0, [], tmp_path)
    assert report.line() == "sqlite: 60 runs, 21 kills, 0 lost, 0 stuck, 1 wrong, 3 duplicate executions, 37 s"
    assert not report.ok
    assert replace(report, wrong=0).ok
    assert not replace(report, wrong=0, process_exits=["worker 1 (pid 5) exited with code 1"]).ok


async def test_bad_options_are_refused_in_one_line() -> None:
    with pytest.raises(ChaosError, match=r"kill interval 1\.0\.\.0\.5 s"):
        await run_chaos(ChaosOptions("sqlite", kill_min=1.0, kill_max=0.5))
    with pytest.raises(ChaosError, match="unknown workflow shapes"):
        await run_chaos(ChaosOptions("sqlite", shapes=("diamond", "spiral")))
