"""The chaos verifier: what each run must look like, recomputed from its input, checked against what the
stores hold and what the execution log saw — never against the engine's own bookkeeping.

A run is *lost* when its status record is gone, *stuck* when it did not reach a final status in time, and
*wrong* when anything else differs: final status, outputs, context, the input any execution saw (so a
join that fired twice or with a partial set, or a successor routed a placeholder, shows), a node on an
untaken branch or a loop pass too many that ran, a retry that did not happen, a final status that changed
after it was published.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcraft.engine.control import RunResult

from flowcraft.chaos.workflows import (
    ANY_PREDECESSORS,
    CANCEL_CHAIN,
    LOOP_PASSES,
    MAP_ITEMS,
    PREFIX,
    RETRY_SUCCEEDS_ON,
    SLEEP_SECONDS,
)

SHAPES = ("diamond", "any5", "loop", "retry", "map", "sleep", "wait", "subflow", "cancel", "fail")
FINAL = frozenset({"completed", "failed", "cancelled"})
CANCEL_GRACE_SECONDS = 1.0  # a job that passed its status check just before the cancel may still start
CLOCK_SLACK_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Execution:
    """One line of the execution log."""

    run_id: str
    node_id: str
    visit: int
    attempt: int
    item: int | None
    pid: int
    t: float
    input: Any

    @property
    def identity(self) -> str:
        """Executions with the same identity are duplicates (at-least-once delivery), not distinct work."""
        return json.dumps([self.run_id, self.node_id, self.visit, self.attempt, self.item, self.input],
                          sort_keys=True)


def read_log(path: Path) -> tuple[list[Execution], int]:
    """The log's executions and the number of lines that did not parse (a torn write would show here)."""
    executions: list[Execution] = []
    unreadable = 0
    if not path.exists():
        return executions, unreadable
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            data = json.loads(line)
            executions.append(Execution(str(data["run_id"]), str(data["node_id"]), int(data["visit"]),
                                        int(data["attempt"]), data["item"], int(data["pid"]), float(data["t"]),
                                        data["input"]))
        except (ValueError, KeyError, TypeError):
            unreadable += 1
    return executions, unreadable


@dataclass(slots=True)
class PlannedRun:
    """A run the harness submitted, and what it did to it."""

    run_id: str
    shape: str
    n: int
    cancelled_at: float | None = None  # when the harness's cancel returned True
    cancel_lost: bool = False  # the harness's cancel found the run already final
    harness_error: str | None = None  # the harness's resume or cancel was refused

    @property
    def blueprint_id(self) -> str:
        return PREFIX + self.shape

    @property
    def resume_action(self) -> str:
        return "approve" if self.n % 2 == 0 else "reject"

    @property
    def resume_output(self) -> dict[str, Any]:
        return {"n": self.n, "decision": self.resume_action}


@dataclass(slots=True)
class ObservedRun:
    """What the stores hold for a run at the end (``None``: no status record), and every distinct
    ``(status, updated_at)`` of its record the harness saw while polling."""

    status: str | None
    outputs: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    history: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def of(cls, result: RunResult) -> ObservedRun:
        """From a ``RunResult``; the run's result (which ``RunResult.context`` leaves out) under ``_result``."""
        context = dict(result.context)
        if result.status == "completed":
            context["_result"] = result.output
        return cls(result.status, result.outputs, context, result.errors)


@dataclass(slots=True)
class Expectation:
    status: str
    outputs: dict[str, Any]
    context: dict[str, Any]  # the keys nodes write (engine keys start with "_")
    inputs: dict[tuple[str, int], Any]  # (node, visit) -> the input every execution of it must see
    map_items: dict[str, list[Any]] = field(default_factory=dict)  # map node -> inputs of its item executions
    max_attempts: dict[str, int] = field(default_factory=dict)  # default 1
    required_attempts: dict[str, int] = field(default_factory=dict)  # attempts 1..k must all have run
    partial: bool = False  # cancelled: outputs may be any consistent subset
    terminal: str | None = None  # the node whose output is the run's result (completed runs)


def expect(run: PlannedRun, any_winner: str | None = None) -> Expectation:
    """What ``run`` must end as, computed from its input alone (``any_winner``: the predecessor whose
    arrival fired the any-join, which the engine may pick freely)."""
    n = run.n
    shape = run.shape
    if shape == "diamond":
        outputs: dict[str, Any] = {"s": n, "c": n + 100}
        if n % 2 == 0:
            outputs.update(a=2 * n, a2=2 * n + 1)
            join_input = {"a2": 2 * n + 1, "c": n + 100}
        else:
            outputs.update(b=3 * n)
            join_input = {"b": 3 * n, "c": n + 100}
        outputs.update(j=sum(join_input.values()), e=sum(join_input.values()) + 1)
        inputs = {("s", 0): {"n": n}, ("c", 0): n, ("j", 0): join_input, ("e", 0): outputs["j"]}
        inputs.update({("a", 0): n, ("a2", 0): 2 * n} if n % 2 == 0 else {("b", 0): n})
        return Expectation("completed", outputs, {"n": n}, inputs, terminal="e")
    if shape == "any5":
        winner = any_winner if any_winner in ANY_PREDECESSORS else ANY_PREDECESSORS[0]
        index = int(winner[1:])
        outputs = {"s": n, **{p: n * 10 + int(p[1:]) for p in ANY_PREDECESSORS}}
        outputs.update(j={winner: n * 10 + index}, e=n * 10 + index)
        inputs = {("s", 0): {"n": n}, ("j", 0): outputs["j"], ("e", 0): outputs["j"]}
        inputs.update({(p, 0): n for p in ANY_PREDECESSORS})
        return Expectation("completed", outputs, {"n": n}, inputs, terminal="e")
    if shape == "loop":
        last = LOOP_PASSES * n
        outputs = {"s": n, "body": last, "again": last, "after": last}
        inputs = {("s", 0): {"n": n}, ("after", 0): last}
        inputs.update({("body", visit): max(visit, 1) * n for visit in range(LOOP_PASSES)})
        return Expectation("completed", outputs, {"n": n, "count": LOOP_PASSES}, inputs, terminal="after")
    if shape == "retry":
        outputs = {"s": n, "flaky": n * 7 + RETRY_SUCCEEDS_ON}
        return Expectation("completed", outputs, {"n": n}, {("s", 0): {"n": n}, ("flaky", 0): n},
                           max_attempts={"flaky": RETRY_SUCCEEDS_ON},
                           required_attempts={"flaky": RETRY_SUCCEEDS_ON}, terminal="flaky")
    if shape == "map":
        items = [n + i for i in range(MAP_ITEMS)]
        squares = [item * item for item in items]
        outputs = {"s": n, "items": items, "squares": squares, "total": sum(squares)}
        inputs = {("s", 0): {"n": n}, ("items", 0): n, ("total", 0): squares}
        return Expectation("completed", outputs, {"n": n}, inputs, map_items={"squares": items}, terminal="total")
    if shape == "sleep":
        return Expectation("completed", {"s": n, "nap": n, "woke": n + 1}, {"n": n},
                           {("s", 0): {"n": n}, ("woke", 0): n}, terminal="woke")
    if shape == "wait":
        branch = "approved" if run.resume_action == "approve" else "rejected"
        outputs = {"s": n, "approval": run.resume_output, branch: run.resume_output}
        return Expectation("completed", outputs, {"n": n}, {("s", 0): {"n": n}, (branch, 0): run.resume_output},
                           terminal=branch)
    if shape == "subflow":
        child = 2 * n + 1
        outputs = {"s": n, "sub": child, "after": child + 1000}
        return Expectation("completed", outputs, {"n": n, "child_total": child},
                           {("s", 0): {"n": n}, ("after", 0): child}, terminal="after")
    if shape == "child":
        return Expectation("completed", {"c1": 2 * n, "c2": 2 * n + 1}, {"total": 2 * n + 1},
                           {("c1", 0): n, ("c2", 0): 2 * n}, terminal="c2")
    if shape == "cancel":
        outputs = {"s": n, **{name: n for name in CANCEL_CHAIN}, "done": n}
        inputs = {("s", 0): {"n": n}, **{(name, 0): n for name in CANCEL_CHAIN}, ("done", 0): n}
        return Expectation("cancelled", outputs, {"n": n}, inputs, partial=True)
    if shape == "fail":
        return Expectation("failed", {"s": n}, {"n": n}, {("s", 0): {"n": n}, ("bad", 0): n},
                           max_attempts={"bad": 2}, required_attempts={"bad": 2})
    raise ValueError(f"unknown chaos shape {shape!r}; known shapes: {', '.join(SHAPES)}")


@dataclass(frozen=True, slots=True)
class Finding:
    run_id: str
    shape: str
    kind: str  # lost | stuck | wrong
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} run {self.run_id} ({self.shape}): {self.detail}"


def child_run_id(parent: ObservedRun) -> str | None:
    """The subflow's child run id, as the parent's context links it."""
    value = parent.context.get("_subflow.sub.0")
    return value if isinstance(value, str) else None


def verify_run(run: PlannedRun, observed: ObservedRun, executions: Sequence[Execution],
               child: tuple[PlannedRun, ObservedRun, Sequence[Execution]] | None = None) -> list[Finding]:
    """Everything that is wrong with one run (empty when it is right)."""
    def finding(kind: str, detail: str) -> Finding:
        return Finding(run.run_id, run.shape, kind, detail)

    if observed.status is None:
        return [finding("lost", "no status record")]
    if observed.status not in FINAL:
        detail = f"still {observed.status}; executed: {_summary(executions)}; status history: {_history(observed)}"
        if run.harness_error:
            detail += f"; the harness was refused: {run.harness_error}"
        return [finding("stuck", detail)]
    problems: list[str] = []
    winner = _any_winner(executions) if run.shape == "any5" else None
    expected = expect(run, winner)
    if run.harness_error:
        problems.append(f"the harness was refused: {run.harness_error}")
    if run.cancel_lost:
        problems.append(f"the harness's cancel found the run already {observed.status} (it takes > 4 s)")
    if observed.status != expected.status:
        errors = "; ".join(str(e.get("message")) for e in observed.errors)
        problems.append(f"status {observed.status}, expected {expected.status}" + (f" (errors: {errors})"
                                                                                   if errors else ""))
    else:
        problems += _check_state(expected, observed)
        if expected.status == "failed" and not any(e.get("node_id") == "bad" for e in observed.errors):
            problems.append(f"failed without an error of node 'bad': {observed.errors}")
    problems += _check_executions(expected, executions)
    problems += _check_history(observed.history)
    if run.shape == "sleep":
        problems += _check_sleep(executions)
    if run.shape == "cancel" and run.cancelled_at is not None:
        late = [e for e in executions if e.t > run.cancelled_at + CANCEL_GRACE_SECONDS]
        if late:
            problems.append(f"{_summary(late)} started more than {CANCEL_GRACE_SECONDS} s after the run was "
                            "cancelled")
    if run.shape == "subflow" and observed.status == "completed":
        if child is None:
            problems.append("the completed parent links no child run")
        else:
            problems += [f"child {f.run_id}: {f.detail}" for f in verify_run(*child)]
    return [finding("wrong", problem) for problem in problems]


def _any_winner(executions: Sequence[Execution]) -> str | None:
    joins = sorted((e for e in executions if e.node_id == "j"), key=lambda e: e.t)
    if joins and isinstance(joins[0].input, dict) and len(joins[0].input) == 1:
        return str(next(iter(joins[0].input)))
    return None


def _check_state(expected: Expectation, observed: ObservedRun) -> list[str]:
    problems: list[str] = []
    if expected.partial:
        differing = {k: v for k, v in observed.outputs.items() if expected.outputs.get(k, _MISSING) != v}
        if differing:
            problems.append(f"outputs {differing} differ from the expected {expected.outputs}")
    elif observed.outputs != expected.outputs:
        problems.append(f"outputs {_diff(observed.outputs, expected.outputs)}")
    user_context = {k: v for k, v in observed.context.items() if not k.startswith("_")}
    if expected.partial:
        differing = {k: v for k, v in user_context.items() if expected.context.get(k, _MISSING) != v}
        if differing:
            problems.append(f"context {differing} differs from the expected {expected.context}")
    elif user_context != expected.context:
        problems.append(f"context {_diff(user_context, expected.context)}")
    if expected.terminal is not None:
        result = expected.outputs[expected.terminal]
        if observed.context.get("_result", _MISSING) != result:
            problems.append(f"result {observed.context.get('_result', _MISSING)!r}, expected {result!r}")
    return problems


def _check_executions(expected: Expectation, executions: Sequence[Execution]) -> list[str]:
    problems: list[str] = []
    seen_attempts: dict[str, set[int]] = {}
    map_seen: dict[str, Counter[str]] = {node: Counter() for node in expected.map_items}
    for execution in executions:
        node = execution.node_id
        seen_attempts.setdefault(node, set()).add(execution.attempt)
        if execution.attempt > expected.max_attempts.get(node, 1):
            problems.append(f"{node} ran attempt {execution.attempt} (at most {expected.max_attempts.get(node, 1)})")
        if node in expected.map_items:
            if execution.input not in expected.map_items[node]:
                problems.append(f"map node {node} ran an item with input {execution.input!r}")
            map_seen[node][json.dumps(execution.input)] += 1
            continue
        key = (node, execution.visit)
        if key not in expected.inputs:
            problems.append(f"{node} (visit {execution.visit}) ran, but must never run in this run")
        elif execution.input != expected.inputs[key]:
            problems.append(f"{node} (visit {execution.visit}, attempt {execution.attempt}, pid {execution.pid}) "
                            f"ran with input {execution.input!r}, expected {expected.inputs[key]!r}")
    for node, count in expected.required_attempts.items():
        missing = set(range(1, count + 1)) - seen_attempts.get(node, set())
        if missing:
            problems.append(f"{node}: attempts {sorted(missing)} never ran (retries must go through the queue)")
    if not expected.partial:
        ran = {(e.node_id, e.visit) for e in executions}
        never_ran = sorted(f"{node}#{visit}" for node, visit in expected.inputs if (node, visit) not in ran)
        if expected.status == "completed" and never_ran:
            problems.append(f"completed although {', '.join(never_ran)} never ran")
        for node, items in expected.map_items.items():
            absent = [item for item in items if map_seen[node][json.dumps(item)] == 0]
            if expected.status == "completed" and absent:
                problems.append(f"map node {node} never ran items {absent}")
    return problems


def _check_history(history: Sequence[tuple[str, float]]) -> list[str]:
    """A final status, once seen, must never change: each change is another winning transition, i.e. a
    second ``run:finish``."""
    first_final = next((i for i, (status, _) in enumerate(history) if status in FINAL), None)
    if first_final is None:
        return []
    later = [entry for entry in history[first_final + 1:] if entry != history[first_final]]
    if later:
        return [f"final status published more than once: {history[first_final]} then {later}"]
    return []


def _check_sleep(executions: Sequence[Execution]) -> list[str]:
    starts = [e.t for e in executions if e.node_id == "s"]
    wakes = [e.t for e in executions if e.node_id == "woke"]
    if starts and wakes and min(wakes) < min(starts) + SLEEP_SECONDS - CLOCK_SLACK_SECONDS:
        return [f"woke ran {min(wakes) - min(starts):.3f} s after the start, before the {SLEEP_SECONDS} s sleep"]
    return []


def duplicate_executions(executions: Iterable[Execution]) -> int:
    """Executions beyond the first of the same node, visit, attempt, item and input."""
    counts = Counter(e.identity for e in executions)
    return sum(count - 1 for count in counts.values())


def by_run(executions: Iterable[Execution]) -> dict[str, list[Execution]]:
    grouped: dict[str, list[Execution]] = {}
    for execution in executions:
        grouped.setdefault(execution.run_id, []).append(execution)
    return grouped


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _diff(observed: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    parts = []
    for key in sorted(set(observed) | set(expected)):
        got, want = observed.get(key, _MISSING), expected.get(key, _MISSING)
        if got != want:
            parts.append(f"{key}: {got!r} (expected {want!r})")
    return "differ: " + "; ".join(parts)


def _history(observed: ObservedRun) -> str:
    if not observed.history:
        return "not seen"
    start = observed.history[0][1]
    return ", ".join(f"{status} at +{at - start:.2f} s" for status, at in observed.history)


def _summary(executions: Sequence[Execution]) -> str:
    counts = Counter(f"{e.node_id}#{e.visit}" for e in executions)
    return ", ".join(f"{key}x{count}" for key, count in counts.items()) or "nothing"
