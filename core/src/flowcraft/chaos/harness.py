"""The chaos harness: real worker processes, random SIGKILLs, a reconciler, optional server restarts,
then an independent check of every run (see :mod:`flowcraft.chaos.verify`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flowcraft.chaos.verify import (
    FINAL,
    SHAPES,
    Finding,
    ObservedRun,
    PlannedRun,
    by_run,
    child_run_id,
    duplicate_executions,
    read_log,
    verify_run,
)
from flowcraft.chaos.workflows import LOG_ENV, PREFIX, app
from flowcraft.client import Client
from flowcraft.config import connect
from flowcraft.errors import FlowcraftError, RunNotFoundError
from flowcraft.spi import StatusStore

T = TypeVar("T")

APP_SPEC = "flowcraft.chaos.workflows:app"
READY_MARKER = "on backend"  # what `flowcraft worker` prints once its backend is built
WORKER_READY_TIMEOUT = 60.0


class ChaosError(FlowcraftError):
    """The harness could not run (bad options, a worker that cannot start)."""


@dataclass(slots=True)
class ChaosOptions:
    backend: str
    runs: int = 200
    seconds: float = 40.0  # how long workers are killed
    workers: int = 3
    kill_min: float = 0.3
    kill_max: float = 1.0
    options: dict[str, str] = field(default_factory=dict)  # backend options, as `--option KEY=VALUE`
    # restarts the backend's server once, halfway through the kills: a command or (tests) a function
    restart_server: Sequence[str] | Callable[[], None] | None = None
    concurrency: int = 8  # jobs in flight per worker process
    reconcile_threshold: float = 2.0
    reconcile_interval: float = 1.0
    settle_timeout: float = 180.0  # after the kills, how long runs may take to end
    poll_interval: float = 0.5  # how often run records are read (resumes, cancels, status history)
    shapes: Sequence[str] = tuple(s for s in SHAPES)
    seed: int | None = None
    workdir: Path | None = None  # logs, the execution log, the SQLite file (default: a new temp dir)


@dataclass(slots=True)
class ChaosReport:
    backend: str
    runs: int
    kills: int
    lost: int
    stuck: int
    wrong: int
    duplicate_executions: int
    seconds: float
    server_restarts: int
    unreadable_log_lines: int
    findings: list[Finding]
    workdir: Path
    process_exits: list[str] = field(default_factory=list)  # workers/reconciler that exited by themselves

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.stuck == 0 and self.wrong == 0 and self.unreadable_log_lines == 0
                and not self.process_exits)

    def line(self) -> str:
        return (f"{self.backend}: {self.runs} runs, {self.kills} kills, {self.lost} lost, {self.stuck} stuck, "
                f"{self.wrong} wrong, {self.duplicate_executions} duplicate executions, {self.seconds:.0f} s")

    def details(self) -> str:
        lines = [str(finding) for finding in self.findings] + self.process_exits
        if self.unreadable_log_lines:
            lines.append(f"{self.unreadable_log_lines} execution log lines could not be read (torn writes?)")
        if self.server_restarts:
            lines.append(f"server restarted {self.server_restarts} time(s)")
        lines.append(f"logs: {self.workdir}")
        return "\n".join(lines)


def _validate(options: ChaosOptions) -> None:
    if options.runs < 1 or options.workers < 1 or options.concurrency < 1:
        raise ChaosError("--runs, --workers and --concurrency must be at least 1")
    if options.seconds < 0 or not 0 < options.kill_min <= options.kill_max:
        raise ChaosError(f"kill interval {options.kill_min}..{options.kill_max} s over {options.seconds} s is "
                         "not valid", hint="use 0 < --kill-min <= --kill-max and --seconds >= 0")
    unknown = [s for s in options.shapes if s not in SHAPES]
    if unknown or not options.shapes:
        raise ChaosError(f"unknown workflow shapes {unknown}", hint=f"choose from {', '.join(SHAPES)}")


class _Fleet:
    """Worker processes of the real CLI, one per slot; a killed slot is started again at once."""

    def __init__(self, options: ChaosOptions, env: dict[str, str], workdir: Path) -> None:
        self.command = [sys.executable, "-m", "flowcraft.cli", "worker", "--app", APP_SPEC,
                        "--backend", options.backend, "--processes", "1",
                        "--concurrency", str(options.concurrency), *_option_args(options.options)]
        self.env = env
        self.workdir = workdir
        self.slots: list[subprocess.Popen[bytes]] = []
        self.crashes: list[str] = []

    def _log(self, slot: int) -> Path:
        return self.workdir / f"worker-{slot}.log"

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        with self._log(slot).open("ab") as log:
            return subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)

    def start(self, count: int) -> None:
        self.slots = [self._spawn(slot) for slot in range(count)]

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        for slot, process in enumerate(self.slots):
            while READY_MARKER not in self._log(slot).read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = self._log(slot).read_text(errors="replace").strip().splitlines()[-5:]
                    raise ChaosError(f"worker {slot} did not start: {' | '.join(tail)}",
                                     hint=f"run `{' '.join(self.command)}` to see why")
                await asyncio.sleep(0.1)

    def kill(self, slot: int) -> None:
        process = self.slots[slot]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.slots[slot] = self._spawn(slot)

    def revive_crashed(self) -> None:
        """Start again any worker that exited by itself (and remember it: that is a finding too)."""
        for slot, process in enumerate(self.slots):
            if process.poll() is not None:
                self.crashes.append(f"worker {slot} (pid {process.pid}) exited with code {process.returncode}")
                self.slots[slot] = self._spawn(slot)

    def stop(self, grace: float = 10.0) -> None:
        _stop(self.slots, grace)


def _stop(processes: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _option_args(options: dict[str, str]) -> list[str]:
    return [f"--option={key}={value}" for key, value in options.items()]


class _Observer:
    """Polls every run's status record; keeps each run's distinct ``(status, updated_at)`` in order."""

    def __init__(self, status: StatusStore, interval: float) -> None:
        self.status = status
        self.interval = interval
        self.history: dict[str, list[tuple[str, float]]] = {}
        self.errors = 0

    def watch(self, run_id: str) -> None:
        self.history.setdefault(run_id, [])

    def latest(self, run_id: str) -> str | None:
        entries = self.history.get(run_id)
        return entries[-1][0] if entries else None

    def all_final(self) -> bool:
        return all(self.latest(run_id) in FINAL for run_id in self.history)

    async def poll_once(self) -> None:
        limit = asyncio.Semaphore(16)

        async def read(run_id: str) -> None:
            async with limit:
                try:
                    record = await self.status.get(run_id)
                except Exception:  # a server restart: the next poll reads it
                    self.errors += 1
                    return
            if record is not None:
                entry = (record.status, record.updated_at)
                entries = self.history[run_id]
                if not entries or entries[-1] != entry:
                    entries.append(entry)

        await asyncio.gather(*(read(run_id) for run_id in list(self.history)))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


async def _retrying(action: Callable[[], Awaitable[T]], until: float) -> T:
    """Call ``action`` until it works (the server may be restarting) or the time is up."""
    while True:
        try:
            return await action()
        except (FlowcraftError, RunNotFoundError):
            raise
        except Exception:
            if time.monotonic() > until:
                raise
            await asyncio.sleep(0.3)


async def _drive(client: Client, observer: _Observer, run: PlannedRun, rng: random.Random, until: float) -> None:
    """Resume a waiting run once it awaits; cancel a cancel-run shortly after it starts. A refusal is kept
    with the run: the verifier reports it."""
    try:
        await _resume_or_cancel(client, observer, run, rng, until)
    except Exception as exc:
        run.harness_error = f"{type(exc).__name__}: {exc}"


async def _resume_or_cancel(client: Client, observer: _Observer, run: PlannedRun, rng: random.Random,
                            until: float) -> None:
    if run.shape == "cancel":
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        won = await _retrying(lambda: client.cancel(run.run_id), until)
        if won:
            run.cancelled_at = time.time()
        else:
            run.cancel_lost = True
        return
    if run.shape != "wait":
        return
    while time.monotonic() < until:
        status = observer.latest(run.run_id)
        if status in FINAL:
            return
        if status == "awaiting":
            await _retrying(lambda: client.resume(run.run_id, action=run.resume_action, output=run.resume_output),
                            until)
            return
        await asyncio.sleep(observer.interval)


async def _restart(restart: Sequence[str] | Callable[[], None]) -> None:
    if callable(restart):
        await asyncio.to_thread(restart)
        return
    completed = await asyncio.to_thread(subprocess.run, list(restart), check=False)
    if completed.returncode != 0:
        raise ChaosError(f"the server restart command {' '.join(restart)!r} exited with {completed.returncode}")


def _start_reconciler(options: ChaosOptions, env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    """``flowcraft reconcile --watch`` with a short stalled threshold, as an operator would run it."""
    with (workdir / "reconciler.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "flowcraft.cli", "reconcile", "--watch",
             "--threshold", str(options.reconcile_threshold), "--interval", str(options.reconcile_interval),
             "--backend", options.backend, *_option_args(options.options)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


async def run_chaos(options: ChaosOptions) -> ChaosReport:
    """Run the chaos harness and verify every run; see the package docstring."""
    _validate(options)
    rng = random.Random(options.seed)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="flowcraft-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "executions.jsonl"
    backend_options: dict[str, Any] = dict(options.options)
    if options.backend == "sqlite":
        backend_options.setdefault("path", str(workdir / "chaos.db"))
    options.options = backend_options
    env = {**os.environ, LOG_ENV: str(log_path)}
    client = connect(options.backend, app=app, **backend_options)
    fleet = _Fleet(options, env, workdir)
    reconciler: subprocess.Popen[bytes] | None = None
    reconciler_exits: list[str] = []
    began = time.monotonic()
    kills = restarts = 0
    plan: list[PlannedRun] = []
    try:
        await client.backend.setup()
        fleet.start(options.workers)
        await fleet.wait_ready()
        reconciler = _start_reconciler(options, env, workdir)
        began = time.monotonic()
        chaos_ends = began + options.seconds
        drive_until = chaos_ends + options.settle_timeout
        observer = _Observer(client.backend.status, options.poll_interval)
        stop_observing = asyncio.Event()
        observing = asyncio.create_task(observer.run(stop_observing))
        drivers: list[asyncio.Task[None]] = []

        async def submit() -> None:
            shapes = [options.shapes[i % len(options.shapes)] for i in range(options.runs)]
            rng.shuffle(shapes)
            spacing = options.seconds * 0.6 / options.runs
            for shape in shapes:
                n = rng.randint(1, 10_000)
                run_id = await _retrying(functools.partial(client.start, PREFIX + shape, {"n": n}), drive_until)
                run = PlannedRun(run_id, shape, n)
                plan.append(run)
                observer.watch(run_id)
                drivers.append(asyncio.create_task(_drive(client, observer, run, rng, drive_until)))
                await asyncio.sleep(spacing)

        submitting = asyncio.create_task(submit())
        restart_at = began + options.seconds / 2 if options.restart_server is not None else None
        while time.monotonic() < chaos_ends:
            await asyncio.sleep(rng.uniform(options.kill_min, options.kill_max))
            fleet.revive_crashed()
            fleet.kill(rng.randrange(len(fleet.slots)))
            kills += 1
            if restart_at is not None and time.monotonic() >= restart_at and options.restart_server is not None:
                await _restart(options.restart_server)
                restarts += 1
                restart_at = None
        await submitting
        while time.monotonic() < drive_until and not (observer.history and observer.all_final()):
            fleet.revive_crashed()
            await asyncio.sleep(options.poll_interval)
        stop_observing.set()
        await observing
        await observer.poll_once()  # the last word of every record
        for task in drivers:
            task.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        fleet.stop()
        if reconciler.poll() is not None:
            reconciler_exits.append(f"the reconciler exited with code {reconciler.returncode}")
        findings = await _verify(client, plan, observer, log_path)
    finally:
        fleet.stop()
        if reconciler is not None:
            _stop([reconciler], 5.0)
        await client.close()
    executions, unreadable = read_log(log_path)
    counted = {kind: len({f.run_id for f in findings if f.kind == kind}) for kind in ("lost", "stuck", "wrong")}
    return ChaosReport(options.backend, len(plan), kills, counted["lost"], counted["stuck"], counted["wrong"],
                       duplicate_executions(executions), time.monotonic() - began, restarts, unreadable, findings,
                       workdir, fleet.crashes + reconciler_exits)


async def _verify(client: Client, plan: Sequence[PlannedRun], observer: _Observer, log_path: Path) -> list[Finding]:
    executions, _ = read_log(log_path)
    grouped = by_run(executions)
    findings: list[Finding] = []
    for run in plan:
        observed = await _observe(client, run.run_id)
        observed.history = observer.history.get(run.run_id, [])
        child = None
        child_id = child_run_id(observed)
        if run.shape == "subflow" and child_id is not None:
            child = (PlannedRun(child_id, "child", run.n), await _observe(client, child_id), grouped.get(child_id, []))
        findings += verify_run(run, observed, grouped.get(run.run_id, []), child)
    return findings


async def _observe(client: Client, run_id: str) -> ObservedRun:
    try:
        result = await client.status(run_id)
    except RunNotFoundError:
        return ObservedRun(None)
    return ObservedRun.of(result)
