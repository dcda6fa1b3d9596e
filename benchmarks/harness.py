"""The benchmark harness: fresh state per trial, real worker processes, side-by-side Celery, JSON + table.

Per (workload, trial):

1. fresh state (a new SQLite file / a new Redis key prefix / a moto reset ...), then the harness starts the
   worker processes (``python -m benchmarks.worker``; Celery: ``celery -A benchmarks.celery_peer worker``)
   and waits until each one says it is ready;
2. warm-up runs (not measured);
3. throughput: R runs submitted at once, then awaited; runs/s and nodes/s over the time from the first
   submission to the last run's completion (the run records' completion timestamps, so the client's polling
   does not blur the figure); for Redis-based backends the ``INFO commandstats`` delta of this phase gives
   Redis commands per executed node (client commands included);
4. latency: runs one at a time, each submitted after the previous one finished; p50/p95 of submit ->
   completion;
5. the worker processes are stopped by PID (SIGTERM, grace, SIGKILL).

In-process (``--backend memory``): the same phases against a ``FlowRuntime`` in this process.
Peers (``--peer celery``, ``--peer ts-flowcraft``) and worker counts (``--workers 1,2``) are interleaved: every
trial of a workload runs each worker count on every system before the next trial starts (the system order
rotates per trial), so all of them see the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ctypes
import gc
import json
import math
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from benchmarks.backend_servers import REQUEST_PREFIX, BackendServers, WorkerCounters, registered
from benchmarks.workloads import WORKLOADS, Workload, expected_output

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "latest.json"
SETTLED = frozenset({"completed", "failed", "cancelled", "awaiting"})
IN_PROCESS = "memory"
REDIS_BACKENDS = frozenset({"rq"})
CELERY = "celery"
TS_FLOWCRAFT = "ts-flowcraft"
PEERS = (CELERY, TS_FLOWCRAFT)  # systems measured beside ours, all on the harness's Redis
AWS_REGION = "us-east-1"

# wide enough for the table when stdout is a file or a CI log
console = Console(width=None if sys.stdout.isatty() else 240)


METRICS = ("runs_per_s", "nodes_per_s", "p50_ms", "p95_ms", "cpu_us_per_node", "client_cpu_us_per_node",
           "server_cpu_us_per_node", "redis_cpu_us_per_node",
           "round_trips_per_node", "sequential_round_trips_per_node", "commands_per_node",
           "worker_requests_per_node", "floor_msgs_per_s", "floor_fraction")


class BenchmarkError(RuntimeError):
    """A benchmark could not run or a run did not complete correctly."""


# --------------------------------------------------------------------------- configuration


@dataclass(slots=True)
class Config:
    backend: str = IN_PROCESS
    worker_counts: list[int] = field(default_factory=lambda: [1, 2])  # interleaved within each trial
    concurrency: int | None = None
    runs: int = 500
    trials: int = 3
    latency_runs: int = 30
    warmup: int = 20
    workloads: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)  # from PEERS, measured beside ours (or alone)
    celery_pool: str = "solo"
    celery_acks_late: bool = False
    redis_url: str | None = None
    aws_endpoint: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = DEFAULT_JSON
    timeout: float = 600.0
    profile: bool = False
    quick: bool = False
    idle_seconds: float = 1.0  # window measuring the workers' idle polling (Redis/moto round trips)
    #: how a batch's runs are awaited: "all" at once (notified waits, gathered) or "ordered" (one after another in
    #: submission order, the harness before 347b806); None: all at once for worker processes on a store that
    #: notifies, else ordered (``ordered_wait``)
    wait: str | None = None

    @property
    def distributed(self) -> bool:
        return self.backend not in (IN_PROCESS, *PEERS)

    def ordered_wait(self, notifies: bool) -> bool:
        """Whether a batch's runs are awaited in submission order by default: in-process (the waits share the
        engine's one thread: 300 waiting runs cost it several µs per node, and nothing is overstated by waiting
        in order) and on a store that does not notify (``Capabilities.notifies``: each of 300 concurrent waits
        would poll the store on its own, which costs the client and the store more than in-order waits)."""
        if self.wait is not None:
            return self.wait == "ordered"
        return self.backend == IN_PROCESS or not notifies

    @property
    def celery(self) -> bool:
        return CELERY in self.peers

    @property
    def needs_redis(self) -> bool:
        return self.backend in REDIS_BACKENDS or bool(self.peers)

    @property
    def worker_concurrency(self) -> int:
        """Jobs in flight per flowcraft worker process (the FlowRuntime's pool in-process)."""
        if self.concurrency is not None:
            return self.concurrency
        return 64 if self.backend == IN_PROCESS else 16

    def runs_for(self, workload: Workload) -> int:
        return max(2, self.runs // workload.run_divisor)

    def warmup_for(self, workload: Workload) -> int:
        return max(1, self.warmup // workload.run_divisor) if self.warmup else 0


DEFAULTS: dict[str, Any] = {"runs": 500, "trials": 3, "latency_runs": 30, "warmup": 20, "idle_seconds": 1.0}
QUICK: dict[str, Any] = {"runs": 20, "trials": 1, "latency_runs": 5, "warmup": 2, "idle_seconds": 0.3}


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark flowcraft workloads on a backend, optionally side by side with Celery.",
    )
    parser.add_argument("--backend", default=IN_PROCESS,
                        help="memory (in-process FlowRuntime), sqlite, rq, sqs, any installed preset, or a peer "
                             "alone (celery, ts-flowcraft)")
    parser.add_argument("--workers", default="1,2",
                        help="worker processes, comma-separated counts measured interleaved (default 1,2)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="jobs in flight per flowcraft worker process (default 16; in-process 64)")
    parser.add_argument("--runs", type=int, help="runs per throughput phase, fan-outs divided (default 500)")
    parser.add_argument("--trials", type=int, help="fresh-state trials per workload (default 3)")
    parser.add_argument("--latency-runs", type=int, help="sequential runs for p50/p95 latency (default 30)")
    parser.add_argument("--warmup", type=int, help="warm-up runs per trial, not measured (default 20)")
    parser.add_argument("--idle-seconds", type=float, help="window measuring idle polling (default 1)")
    parser.add_argument("--workloads", default="", help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke run (CI): 20 runs, 1 trial, 5 latency runs, 2 warm-up runs")
    parser.add_argument("--peer", action="append", choices=PEERS, default=[],
                        help="also measure this system on the same Redis and workloads (repeatable): celery "
                             "(Celery canvases), ts-flowcraft (TypeScript Flowcraft 2.10.1 + BullMQ adapter, node)")
    parser.add_argument("--celery", action="store_true", help="the same as --peer celery")
    parser.add_argument("--celery-pool", choices=("solo", "prefork", "threads"), default="solo",
                        help="solo: N celery processes (default); prefork: 1 worker -c N; threads: N x -c C")
    parser.add_argument("--celery-acks-late", action="store_true", help="Celery task_acks_late=True")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting redis-server")
    parser.add_argument("--aws-endpoint", default=None, help="use this SQS/DynamoDB endpoint instead of moto")
    parser.add_argument("--backend-options", default="{}",
                        help='extra backend options as JSON; "{trial}" in a value becomes a fresh tag per trial')
    parser.add_argument("--json", dest="json_path", default=str(DEFAULT_JSON), help="where to write the results")
    parser.add_argument("--no-json", action="store_true", help="do not write a JSON file")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a phase is given up")
    parser.add_argument("--profile", action="store_true",
                        help="in-process only: cProfile the throughput phase, print the top functions")
    parser.add_argument("--wait", choices=("all", "ordered"), default=None,
                        help="await a batch's runs all at once (notified waits; default with worker processes on a "
                             "store that notifies) or one after another in submission order (default in-process "
                             "and on stores whose waits poll)")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else DEFAULTS
    try:
        worker_counts = sorted({int(n) for n in str(args.workers).split(",") if n.strip()})
    except ValueError:
        parser.error(f"--workers takes comma-separated counts, not {args.workers!r}")
    if not worker_counts or min(worker_counts) < 1:
        parser.error("--workers needs counts of at least 1")
    peers = list(dict.fromkeys([*args.peer, *([CELERY] if args.celery else []),
                                *([args.backend] if args.backend in PEERS else [])]))
    pick = {name: getattr(args, name) if getattr(args, name) is not None else default
            for name, default in sizes.items()}
    config = Config(
        backend=args.backend, worker_counts=worker_counts, concurrency=args.concurrency, runs=max(1, pick["runs"]),
        trials=max(1, pick["trials"]), latency_runs=max(0, pick["latency_runs"]), warmup=max(0, pick["warmup"]),
        idle_seconds=max(0.0, pick["idle_seconds"]),
        peers=peers, celery_pool=args.celery_pool,
        celery_acks_late=args.celery_acks_late, redis_url=args.redis_url, aws_endpoint=args.aws_endpoint,
        json_path=None if args.no_json else Path(args.json_path), timeout=args.timeout, profile=args.profile,
        quick=args.quick, wait=args.wait,
    )
    try:
        config.backend_options = dict(json.loads(args.backend_options))
    except (ValueError, TypeError) as exc:
        parser.error(f"--backend-options is not a JSON object: {exc}")
    if config.profile and config.backend != IN_PROCESS:
        parser.error("--profile profiles the in-process engine: use it with --backend memory")
    config.workloads = _select_workloads(parser, config, args.workloads)
    return config


def _select_workloads(parser: argparse.ArgumentParser, config: Config, text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if not names:
        if config.backend in PEERS:
            names = ["chain10", "diamond8"]
        elif config.backend == IN_PROCESS:
            names = list(WORKLOADS)
        else:
            names = [n for n, w in WORKLOADS.items() if not w.in_process_only]
    return names


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class Trial:
    runs: int
    nodes_per_run: int
    seconds: float  # first submission -> last completion (completion timestamps)
    observed_seconds: float  # first submission -> the client saw the last run finished
    runs_per_s: float
    nodes_per_s: float
    latencies_ms: list[float]
    p50_ms: float | None
    p95_ms: float | None
    # Throughput phase, workers + client together. Round trips: requests the server read (Redis: a pipeline
    # or a script is one; moto: HTTP requests). Redis commands: Lua-internal ones included.
    round_trips: int | None = None
    round_trips_per_node: float | None = None
    # the same during the latency phase (one run at a time, so no batching across runs); the harness's own
    # status polls are subtracted, the client's submissions are not
    sequential_round_trips_per_node: float | None = None
    idle_round_trips_per_s: float | None = None  # workers polling with nothing to do (subtracted above)
    sequential_top_commands: dict[str, int] = field(default_factory=dict)  # Redis, latency phase
    redis_commands: int | None = None
    commands_per_node: float | None = None
    top_commands: dict[str, int] = field(default_factory=dict)
    # CPU time of the throughput phase per executed node: the harness process + the worker processes (all
    # processes of their sessions), and separately the servers this harness started (redis, moto).
    # Far less sensitive to other load on the machine than wall-clock figures.
    cpu_us_per_node: float | None = None
    client_cpu_us_per_node: float | None = None  # the harness process's share (in-process: everything)
    server_cpu_us_per_node: float | None = None
    # Redis's own account of its CPU (INFO cpu: used_cpu_user + used_cpu_sys), also for a Redis the harness
    # did not start; Redis runs commands on one thread, so 1e6 / this is the node rate that saturates it
    redis_cpu_us_per_node: float | None = None
    # rabbitmq, azure, kafka (benchmarks/backend_servers.py): the requests the worker processes sent during
    # the throughput phase per node, by service and operation (their own count, SIGUSR1 before and after),
    # and the raw queue floor measured right after the trial on the same servers (nodes/s over it)
    worker_requests: dict[str, float] = field(default_factory=dict)
    worker_requests_per_node: float | None = None
    floor_msgs_per_s: float | None = None
    floor_fraction: float | None = None


@dataclass(slots=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        present = [v for v in values if v is not None]
        if not present:
            return None
        return cls(statistics.median(present), min(present), max(present))


@dataclass(slots=True)
class Cell:
    """One system x backend x workload: its trials and their summary."""

    system: str  # "flowcraft" or a peer (PEERS)
    backend: str
    workload: str
    processes: int  # worker processes (0 = in-process)
    concurrency: int  # jobs in flight per process
    trials: list[Trial] = field(default_factory=list)
    note: str = ""
    failed: bool = False

    def spread(self, metric: str) -> Spread | None:
        return Spread.of([getattr(t, metric) for t in self.trials])

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for metric in METRICS:
            spread = self.spread(metric)
            out[metric] = None if spread is None else asdict(spread)
        return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def make_trial(runs: int, nodes: int, submitted: float, completed: float, observed: float,
               latencies_ms: list[float], commands: dict[str, int] | None,
               cpu: tuple[float, float, float | None] | None = None) -> Trial:
    seconds = max(completed - submitted, 1e-9)
    trial = Trial(
        runs=runs, nodes_per_run=nodes, seconds=seconds, observed_seconds=observed - submitted,
        runs_per_s=runs / seconds, nodes_per_s=runs * nodes / seconds, latencies_ms=latencies_ms,
        p50_ms=percentile(latencies_ms, 50), p95_ms=percentile(latencies_ms, 95),
    )
    if commands is not None:
        commands = dict(commands)
        requests = {k.removeprefix(REQUEST_PREFIX): commands.pop(k) for k in list(commands)
                    if k.startswith(REQUEST_PREFIX)}
        if requests:
            trial.worker_requests = {k: n / (runs * nodes) for k, n in sorted(requests.items())}
            trial.worker_requests_per_node = sum(requests.values()) / (runs * nodes)
        reads = commands.pop(READS, 0)
        trial.round_trips = reads
        trial.round_trips_per_node = reads / (runs * nodes)
        if REDIS_CPU in commands:
            trial.redis_cpu_us_per_node = commands.pop(REDIS_CPU) / (runs * nodes)
        if commands:
            total = sum(commands.values())
            trial.redis_commands = total
            trial.commands_per_node = total / (runs * nodes)
            trial.top_commands = dict(sorted(commands.items(), key=lambda kv: -kv[1])[:12])
    if cpu is not None:
        client, workers, servers = cpu
        trial.cpu_us_per_node = (client + workers) / (runs * nodes) * 1e6
        trial.client_cpu_us_per_node = client / (runs * nodes) * 1e6
        trial.server_cpu_us_per_node = None if servers is None else servers / (runs * nodes) * 1e6
    return trial


# --------------------------------------------------------------------------- Redis command counting


class RedisCommandCounter:
    """What a Redis server did between two snapshots (all clients, all databases), from one
    ``INFO stats commandstats``:

    * commands by name (``commandstats``; commands a Lua script runs are counted too, an EVALSHA that runs
      12 commands counts 13);
    * reads processed (``total_reads_processed``): one per request the server read from a socket, so a
      pipeline or a script is one. That is our measure of network round trips;
    * CPU microseconds the server spent (``INFO cpu``, user + system).

    The snapshot's own INFO is left out of both.
    """

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        if url.split("://", 1)[0].endswith("+cluster"):  # a Redis Cluster: the sum over its primaries
            cluster = redis.RedisCluster.from_url(url.replace("+cluster://", "://", 1))
            self.clients = [redis.Redis(host=node.host, port=node.port) for node in cluster.get_primaries()]
            cluster.close()
        else:
            self.clients = [redis.Redis.from_url(url)]
        self.client = self.clients[0]

    def snapshot(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for client in self.clients:
            info = client.info("stats", "commandstats", "cpu")
            for k, v in info.items():
                if str(k).startswith("cmdstat_") and isinstance(v, dict):
                    name = str(k).removeprefix("cmdstat_")
                    out[name] = out.get(name, 0) + int(v["calls"])
            out[READS] = out.get(READS, 0) + int(info.get("total_reads_processed", 0))
            out[REDIS_CPU] = out.get(REDIS_CPU, 0) + round(
                (float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0))) * 1e6)
        out[NODES] = len(self.clients)
        return out

    @staticmethod
    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        out = {k: n - before.get(k, 0) for k, n in after.items() if k not in ("info", NODES)}
        out[READS] = out.get(READS, 0) - after.get(NODES, 1)  # the second snapshot's INFO (one per server)
        return {k: n for k, n in out.items() if n > 0}

    def flushdb(self, db: int) -> None:
        import redis

        client = redis.Redis.from_url(with_db(self.url, db))
        try:
            client.flushdb()
        finally:
            client.close()

    def close(self) -> None:
        for client in self.clients:
            client.close()


READS = "(reads)"
REDIS_CPU = "(cpu us)"
NODES = "(servers)"


class MotoRequestCounter:
    """HTTP requests a moto server served (its request log), i.e. SQS/DynamoDB round trips."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    def snapshot(self) -> dict[str, int]:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return {READS: 0}
        return {READS: sum(1 for line in text.splitlines() if ' HTTP/1.1" ' in line and "/moto-api/" not in line)}

    @staticmethod
    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return {READS: after.get(READS, 0) - before.get(READS, 0)}


class CombinedCounter:
    """A Redis server's counts and the worker processes' own (:class:`benchmarks.backend_servers.WorkerCounters`)
    in one snapshot."""

    def __init__(self, redis: RedisCommandCounter, workers: WorkerCounters) -> None:
        self.redis = redis
        self.workers = workers

    def snapshot(self) -> dict[str, int]:
        try:
            workers = self.workers.snapshot()
        except RuntimeError as exc:  # a worker died or did not answer
            raise BenchmarkError(str(exc)) from None
        return {**self.redis.snapshot(), **workers}

    @staticmethod
    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return RedisCommandCounter.delta(before, after)


class Counter(Protocol):
    def snapshot(self) -> dict[str, int]: ...

    @staticmethod
    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]: ...


def idle_round_trips(counter: Counter, seconds: float) -> float | None:
    """Requests per second the server gets while the workers have nothing to do (their polling)."""
    if seconds <= 0:
        return None
    before = counter.snapshot()
    time.sleep(seconds)
    return counter.delta(before, counter.snapshot()).get(READS, 0) / seconds


def set_sequential(trial: Trial, reads: int, seconds: float, idle_rate: float | None, nodes: int) -> None:
    """Round trips per node of the one-run-at-a-time phase, less what idle polling would have cost then."""
    trial.idle_round_trips_per_s = idle_rate
    idle = (idle_rate or 0.0) * seconds
    trial.sequential_round_trips_per_node = max(0.0, reads - idle) / nodes


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ProcessGroup:
    """Worker processes started by the harness, each in its own session, stopped by PID."""

    def __init__(self, label: str, commands: Sequence[Sequence[str]], env: dict[str, str], log_dir: Path,
                 ready_marker: str, startup_timeout: float = 60.0) -> None:
        self.label = label
        self.commands = [list(c) for c in commands]
        self.env = env
        self.log_dir = log_dir
        self.ready_marker = ready_marker
        self.startup_timeout = startup_timeout
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index, argv in enumerate(self.commands):
            log_path = self.log_dir / f"{self.label}-{index}-{uuid.uuid4().hex[:6]}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                    env=self.env, start_new_session=True, preexec_fn=_die_with_parent,
                )
            self.processes.append((process, log_path))
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        waiting = list(self.processes)
        while waiting:
            for process, log_path in list(waiting):
                if self.ready_marker in log_path.read_text("utf-8", "replace"):
                    waiting.remove((process, log_path))
                elif process.poll() is not None:
                    raise BenchmarkError(f"{self.label} worker (pid {process.pid}) exited with code "
                                         f"{process.returncode} before it was ready:\n{_tail(log_path)}")
            if waiting and time.monotonic() > deadline:
                process, log_path = waiting[0]
                raise BenchmarkError(f"{self.label} worker (pid {process.pid}) not ready after "
                                     f"{self.startup_timeout:.0f}s:\n{_tail(log_path)}")
            if waiting:
                time.sleep(0.05)

    def keep_logs(self, config: Config, tag: str) -> Path:
        """Copy the workers' logs next to the JSON results (the temporary directory goes away)."""
        base = config.json_path.parent if config.json_path is not None else DEFAULT_JSON.parent
        target = base / "logs" / tag
        target.mkdir(parents=True, exist_ok=True)
        for _, log_path in self.processes:
            with contextlib.suppress(OSError):
                shutil.copy(log_path, target / log_path.name)
        return target

    @property
    def pids(self) -> list[int]:
        return [process.pid for process, _ in self.processes]

    def stop(self, grace: float = 15.0) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process, _ in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(10)
            # children left in the worker's own session (e.g. Celery prefork children): pgid == its pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        self.processes = []

    def __enter__(self) -> ProcessGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def session_cpu_seconds(leaders: Sequence[int]) -> float:
    """User + system CPU seconds of every live process in the process groups led by ``leaders`` (Linux /proc;
    the harness starts workers and servers in their own sessions, so a group is one worker or server with
    its children, e.g. Celery's prefork pool), and of their direct children that left the group (PostgreSQL's
    backends call ``setsid``)."""
    groups = set(leaders)
    if not groups:
        return 0.0
    processes: list[tuple[int, int, int, int]] = []  # pid, parent pid, process group, ticks
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                data = handle.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        processes.append((int(entry.name), int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12])))
    members = {pid for pid, _, group, _ in processes if group in groups}
    ticks = sum(used for pid, parent, group, used in processes if group in groups or parent in members)
    return ticks / _CLOCK_TICKS


class CpuMeter:
    """CPU seconds of this process + the worker process groups, and of the servers, between two reads."""

    def __init__(self, workers: Sequence[int], servers: Sequence[int]) -> None:
        self.workers = list(workers)
        self.servers = list(servers)
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        return time.process_time(), session_cpu_seconds(self.workers), session_cpu_seconds(self.servers)

    def stop(self) -> tuple[float, float, float | None]:
        """(this process, worker processes, servers or None) CPU seconds since the meter was made."""
        client, workers, servers = self._read()
        return (client - self._start[0], workers - self._start[1],
                (servers - self._start[2]) if self.servers else None)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- infrastructure


def _server_class(module: str, name: str) -> Any:
    """A server class of tests-integration/servers (RedisServer, MotoServer): real servers on free ports."""
    import importlib

    path = str(REPO_ROOT / "tests-integration")
    if path not in sys.path:
        sys.path.insert(0, path)
    return getattr(importlib.import_module(f"servers.{module}"), name)


def _start_server(server: Any) -> Any:
    """Start a tests-integration server; a missing program or a failed start is one clear error."""
    try:
        return server.start()
    except RuntimeError as exc:  # servers.base.ServerError
        raise BenchmarkError(f"could not start {server.name}: {exc}") from None


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


class Infrastructure:
    """The servers a run needs (started here unless the user points at their own) and fresh state per trial."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stack = contextlib.ExitStack()
        self.tmp = Path(tempfile.mkdtemp(prefix="flowcraft-bench-"))
        self.stack.callback(shutil.rmtree, self.tmp, True)
        self.redis_url: str | None = None
        self.owns_redis = False
        self.aws_endpoint: str | None = None
        self.moto: Any = None
        self.counter: RedisCommandCounter | None = None
        self.celery_used = False
        self._ts_flowcraft: Path | None = None
        self.server_pids: list[int] = []  # servers this harness started (their CPU is reported apart)
        # --backend rabbitmq, azure, kafka: their servers and the server-side counter of their Redis
        self.servers: BackendServers | None = None
        self.servers_redis: RedisCommandCounter | None = None

    def __enter__(self) -> Infrastructure:
        config = self.config
        if config.needs_redis:
            if config.redis_url:
                self.redis_url = config.redis_url
            else:
                server = _start_server(_server_class("redis", "RedisServer")(maxmemory="1gb"))
                self.stack.callback(server.close)
                self.redis_url, self.owns_redis = server.url, True
                self.server_pids.append(server.pid)
                console.print(f"[dim]started redis-server pid {server.pid} on {server.url}[/dim]")
            self.counter = RedisCommandCounter(self.redis_url)
            self.stack.callback(self.counter.close)
        servers = registered(config.backend)
        if servers is not None:
            self.servers = servers.start(config.backend_options, self.stack, self.server_pids, _server_class,
                                         _start_server, lambda text: console.print(f"[dim]{text}[/dim]"))
            self.servers_redis = RedisCommandCounter(self.servers.redis_url)
            self.stack.callback(self.servers_redis.close)
        if config.backend == "sqs":
            for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                               ("AWS_DEFAULT_REGION", AWS_REGION)):
                os.environ.setdefault(key, value)
            if config.aws_endpoint:
                self.aws_endpoint = config.aws_endpoint
            else:
                self.moto = _start_server(_server_class("moto", "MotoServer")())
                self.stack.callback(self.moto.close)
                self.aws_endpoint = self.moto.endpoint_url
                self.server_pids.append(self.moto.pid)
                console.print(f"[dim]started moto_server pid {self.moto.pid} on {self.aws_endpoint}[/dim]")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    @property
    def celery_url(self) -> str:
        assert self.redis_url is not None
        return with_db(self.redis_url, 1)

    def fresh_options(self, tag: str) -> dict[str, Any]:
        """Backend options that start from empty state (and reset what this harness owns)."""
        backend = self.config.backend
        options: dict[str, Any] = {}
        if backend == "sqlite":
            options["path"] = str(self.tmp / f"{tag}.db")
        elif backend == "rq":
            assert self.redis_url is not None and self.counter is not None
            if self.owns_redis:
                self.counter.flushdb(0)
            options.update(redis_url=self.redis_url, key_prefix=f"fcbench:{tag}:", queue_name=f"fcbench-{tag}")
        elif backend == "sqs":
            if self.moto is not None:
                self.moto.reset()
            options.update(endpoint_url=self.aws_endpoint, region=AWS_REGION, queue_name=f"fcbench-{tag}",
                           table_prefix=f"fcbench-{tag}-")
        elif self.servers is not None:
            options.update(self.servers.fresh_options(tag))
        for key, value in self.config.backend_options.items():
            options[key] = value.replace("{trial}", tag) if isinstance(value, str) else value
        return options

    def flowcraft_counter(self, workers: ProcessGroup) -> Counter | None:
        """Round trips (and commands) of the flowcraft backend, where the harness can see them."""
        if self.servers_redis is not None:
            return CombinedCounter(self.servers_redis, WorkerCounters(workers.processes))
        if self.config.backend in REDIS_BACKENDS:
            return self.counter
        if self.config.backend == "sqs" and self.moto is not None:
            return MotoRequestCounter(Path(self.moto.log_path))
        return None

    def ts_flowcraft_folder(self) -> Path:
        """The TS peer's installed packages and scripts (``npm install`` into the cache on first use)."""
        if self._ts_flowcraft is None:
            from benchmarks import ts_peer

            with _progress(f"installing {TS_FLOWCRAFT} npm packages"):
                self._ts_flowcraft = ts_peer.install()
        return self._ts_flowcraft

    def fresh_celery(self) -> None:
        if self.owns_redis and self.counter is not None:
            self.counter.flushdb(1)


# --------------------------------------------------------------------------- flowcraft measurement


class Target(Protocol):
    """What the measurement needs: a FlowRuntime in-process, a Client for worker processes."""

    backend: Any
    engine: Any

    async def start(self, blueprint_id: str, input: Any = None) -> str: ...


async def settle(target: Target, run_id: str, deadline: float, polls: list[int] | None = None,
                 max_delay: float = 0.02, *, notified: bool = False) -> Any:
    """Wait until the run settles (a short capped poll; the memory store wakes us at once). Every status
    read is counted in ``polls[0]`` (the harness's own requests, left out of the sequential round trips).
    ``notified``: wait as ``Client.wait`` does on a store that notifies (a read, then a wait the store's
    notification ends, re-read at most every second), not a poll: what a batch's concurrent waits use."""
    status = target.backend.status
    delay = 1.0 if notified else 0.001
    if notified:
        await status.watch(run_id)  # as Client.wait: a change after the first read ends the first wait
    while True:
        record = await status.get(run_id)
        if polls is not None:
            polls[0] += 1
        if record is not None and record.status in SETTLED:
            return record
        if time.monotonic() > deadline:
            raise BenchmarkError(f"run {run_id} did not finish in time (status "
                                 f"{record.status if record else 'missing'}); are the workers running?")
        await status.wait_for_change(run_id, delay)
        if not notified:
            delay = min(delay * 2, max_delay)


async def check_record(target: Target, record: Any) -> None:
    if record.status != "completed":
        errors = "; ".join(str(e.get("message")) for e in record.errors) or "no error recorded"
        raise BenchmarkError(f"run {record.run_id} ended {record.status}: {errors}")


async def batch(target: Target, workload: Workload, count: int, timeout: float, *, ordered: bool = False
                ) -> tuple[float, float, float, list[str]]:
    """Submit ``count`` runs at once, await them all: (submitted, last completion, observed end, run ids).

    The runs are awaited all at once, as a user waiting on many runs would (``asyncio.gather`` over one wait
    per run, each woken by the store's notification where it has one), so runs that finish out of order cost
    no more to see than runs that finish in order; ``ordered``: one after another in submission order, a
    short capped poll each (the harness before 2026-11-26)."""
    deadline = time.monotonic() + timeout
    submitted = time.time()
    run_ids = await asyncio.gather(*(target.start(workload.name, 0) for _ in range(count)))
    if ordered:
        records = [await settle(target, run_id, deadline) for run_id in run_ids]
    else:
        notified = bool(target.backend.capabilities.notifies)
        records = await asyncio.gather(*(settle(target, run_id, deadline, notified=notified) for run_id in run_ids))
    completed = 0.0
    for record in records:
        await check_record(target, record)
        completed = max(completed, record.updated_at or time.time())
    observed = time.time()
    return submitted, max(completed, submitted), observed, list(run_ids)


async def verify(target: Target, workload: Workload, run_id: str) -> None:
    result = await target.engine.runs.result(run_id)
    expected = expected_output(workload.name)
    if result.output != expected or len(result.outputs) != workload.nodes:
        raise BenchmarkError(f"{workload.name}: run {run_id} produced {result.output!r} with "
                             f"{len(result.outputs)} node outputs; expected {expected!r} and {workload.nodes}")


async def measure_flowcraft(config: Config, target: Target, workload: Workload,
                            counter: Counter | None, profiler: cProfile.Profile | None,
                            worker_pids: Sequence[int] = (), server_pids: Sequence[int] = ()) -> Trial:
    runs = config.runs_for(workload)
    ordered = config.ordered_wait(bool(target.backend.capabilities.notifies))
    if config.warmup_for(workload):
        await batch(target, workload, config.warmup_for(workload), config.timeout, ordered=ordered)
    idle_rate = await asyncio.to_thread(idle_round_trips, counter, config.idle_seconds) if counter else None
    before = counter.snapshot() if counter else None
    meter = CpuMeter(worker_pids, server_pids)
    if profiler is not None:
        profiler.enable()
    submitted, completed, observed, run_ids = await batch(target, workload, runs, config.timeout, ordered=ordered)
    if profiler is not None:
        profiler.disable()
    cpu = meter.stop()
    commands = counter.delta(before, counter.snapshot()) if counter and before is not None else None
    await verify(target, workload, run_ids[0])
    latencies: list[float] = []
    deadline = time.monotonic() + config.timeout
    polls = [0]
    before = counter.snapshot() if counter else None
    began = time.monotonic()
    for _ in range(config.latency_runs):
        start = time.time()
        run_id = await target.start(workload.name, 0)
        # latency comes from the completion timestamp, so polling slowly here costs wall time, not accuracy
        record = await settle(target, run_id, deadline, polls, max_delay=0.05)
        await check_record(target, record)
        latencies.append(((record.updated_at or time.time()) - start) * 1000)
    trial = make_trial(runs, workload.nodes, submitted, completed, observed, latencies, commands, cpu)
    if counter is not None and before is not None and config.latency_runs:
        delta = counter.delta(before, counter.snapshot())
        reads = delta.pop(READS, 0) - polls[0]
        delta.pop(REDIS_CPU, None)
        delta = {k: n for k, n in delta.items() if not k.startswith(REQUEST_PREFIX)}
        set_sequential(trial, reads, time.monotonic() - began, idle_rate, config.latency_runs * workload.nodes)
        trial.sequential_top_commands = dict(sorted(delta.items(), key=lambda kv: -kv[1])[:12])
    return trial


async def in_process_trial(config: Config, workload: Workload, profiler: cProfile.Profile | None) -> Trial:
    from benchmarks.workloads import app
    from flowcraft import FlowRuntime

    gc.collect()  # the dropped runtime of the previous trial is collected before this trial's window, not in it
    runtime = FlowRuntime(app=app, concurrency=config.worker_concurrency)
    try:
        return await measure_flowcraft(config, runtime, workload, None, profiler)
    finally:
        await runtime.close()


async def distributed_trial(config: Config, infra: Infrastructure, workload: Workload, tag: str,
                            processes: int) -> Trial:
    from benchmarks.worker import READY_MARKER
    from benchmarks.workloads import app
    from flowcraft.client import Client
    from flowcraft.plugins import registry

    options = infra.fresh_options(tag)
    backend = registry().build(config.backend, options)
    client = Client(backend, app)
    try:
        await backend.setup()
        command = [sys.executable, "-m", "benchmarks.worker", "--backend", config.backend,
                   "--options", json.dumps(options), "--concurrency", str(config.worker_concurrency)]
        if infra.servers is not None:
            command += ["--hook", infra.servers.hook]
        workers = ProcessGroup(f"flowcraft-{config.backend}", [command] * processes, child_env(),
                               infra.tmp / "logs", READY_MARKER)
        await asyncio.to_thread(workers.start)
        try:
            counter = infra.flowcraft_counter(workers)
            trial = await measure_flowcraft(config, client, workload, counter, None, workers.pids, infra.server_pids)
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc} (worker logs: {workers.keep_logs(config, tag)})") from None
        finally:
            await asyncio.to_thread(workers.stop)
        if infra.servers is not None:  # once the workers are gone: their idle polling is not the floor's load
            window = config.worker_concurrency * processes  # at least a full window of chains (fan-outs)
            floor = await infra.servers.floor(max(config.runs_for(workload), window), window)
            trial.floor_msgs_per_s, trial.floor_fraction = floor, trial.nodes_per_s / floor
        return trial
    finally:
        await client.close()


# --------------------------------------------------------------------------- Celery measurement


def celery_commands(config: Config, processes: int) -> list[list[str]]:
    base = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_peer", "worker", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "-l", "warning", "-Q", "flowcraft-bench-celery"]
    if config.celery_pool == "prefork":
        return [[*base, "-P", "prefork", "-c", str(processes), "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"]]
    pool = ["-P", "solo"] if config.celery_pool == "solo" else ["-P", "threads", "-c", str(config.worker_concurrency)]
    return [[*base, *pool, "-n", f"bench{i}-{uuid.uuid4().hex[:6]}@%h"] for i in range(processes)]


def celery_concurrency(config: Config) -> int:
    """Tasks in flight per Celery worker process."""
    return config.worker_concurrency if config.celery_pool == "threads" else 1


def celery_trial(config: Config, infra: Infrastructure, workload: Workload, tag: str, processes: int) -> Trial:
    from benchmarks import celery_peer

    if not infra.celery_used:
        celery_peer.configure(infra.celery_url)
        infra.celery_used = True
        infra.stack.callback(_close_celery_client)  # runs before the Redis server is stopped
    factory, tasks, expected = celery_peer.CANVASES[workload.name]
    infra.fresh_celery()
    env = child_env({celery_peer.URL_ENV: infra.celery_url,
                     celery_peer.ACKS_LATE_ENV: "1" if config.celery_acks_late else "0"})
    workers = ProcessGroup("celery", celery_commands(config, processes), env, infra.tmp / "logs",
                           celery_peer.READY_MARKER)
    counter = infra.counter

    def run_batch(count: int) -> tuple[float, float, float]:
        submitted = time.time()
        results = [factory().apply_async() for _ in range(count)]
        completed = submitted
        for result in results:
            value = _celery_get(result, config.timeout)
            if value != expected:
                raise BenchmarkError(f"celery {workload.name}: got {value!r}, expected {expected!r}")
            done = result.date_done
            completed = max(completed, _timestamp(done) if done is not None else time.time())
        return submitted, completed, time.time()

    with workers:
        try:
            runs = config.runs_for(workload)
            if config.warmup_for(workload):
                run_batch(config.warmup_for(workload))
            idle_rate = idle_round_trips(counter, config.idle_seconds) if counter else None
            before = counter.snapshot() if counter else None
            meter = CpuMeter(workers.pids, infra.server_pids)
            submitted, completed, observed = run_batch(runs)
            cpu = meter.stop()
            commands = RedisCommandCounter.delta(before, counter.snapshot()) if counter and before is not None else None
            latencies: list[float] = []
            before = counter.snapshot() if counter else None
            began = time.monotonic()
            for _ in range(config.latency_runs):
                start = time.time()
                result = factory().apply_async()
                if _celery_get(result, config.timeout) != expected:
                    raise BenchmarkError(f"celery {workload.name}: wrong result")
                done = result.date_done
                latencies.append(((_timestamp(done) if done is not None else time.time()) - start) * 1000)
            sequential = counter.delta(before, counter.snapshot()).get(READS, 0) if counter and before else None
            elapsed = time.monotonic() - began
            _release_celery_results()
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc} (worker logs: {workers.keep_logs(config, tag)})") from None
    trial = make_trial(runs, tasks, submitted, completed, observed, latencies, commands, cpu)
    if sequential is not None and config.latency_runs:
        set_sequential(trial, sequential, elapsed, idle_rate, config.latency_runs * tasks)
    return trial


def _celery_get(result: Any, timeout: float) -> Any:
    try:
        return result.get(timeout=timeout)
    except Exception as exc:  # celery.exceptions.TimeoutError, a task's error, a lost connection
        raise BenchmarkError(f"celery task {result.id}: {type(exc).__name__}: {exc}") from None


def _release_celery_results() -> None:
    """Drop the result subscriptions Celery's client keeps (a chord's header results are never awaited, so
    they stay pending) while Redis is still up; ``AsyncResult.__del__`` unsubscribes through Redis."""
    from benchmarks import celery_peer

    pending = getattr(celery_peer.app.backend, "_pending_results", None)
    concrete = getattr(pending, "concrete", None)
    if isinstance(concrete, dict):
        concrete.clear()
    gc.collect()


def _close_celery_client() -> None:
    from benchmarks import celery_peer

    _release_celery_results()
    with contextlib.suppress(Exception):
        celery_peer.app.close()


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return float(value)


# --------------------------------------------------------------------------- orchestration


@dataclass(slots=True)
class Report:
    meta: dict[str, Any]
    cells: list[Cell]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "failures": self.failures,
            "results": [{**asdict(c), "summary": c.summary()} for c in self.cells],
            "comparisons": self.comparisons,
            "profiles": self.profiles,
        }


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


@dataclass(slots=True)
class Lane:
    """One system at one worker count within a workload: its cell and how to run one trial of it."""

    cell: Cell
    label: str
    measure: Callable[[str], Trial]


def _lanes(config: Config, infra: Infrastructure, workload: Workload,
           profiler: cProfile.Profile | None) -> list[list[Lane]]:
    """The lanes of a workload grouped by worker count (in-process: one group of one)."""
    from benchmarks import ts_peer

    name = workload.name
    if not config.distributed and config.backend == IN_PROCESS:
        cell = Cell("flowcraft", IN_PROCESS, name, 0, config.worker_concurrency)
        return [[Lane(cell, f"flowcraft memory {name}",
                      lambda tag: asyncio.run(in_process_trial(config, workload, profiler)))]]
    groups: list[list[Lane]] = []
    for processes in config.worker_counts:
        lanes: list[Lane] = []

        def ours(tag: str, processes: int = processes) -> Trial:
            return asyncio.run(distributed_trial(config, infra, workload, tag, processes))

        def celery(tag: str, processes: int = processes) -> Trial:
            return celery_trial(config, infra, workload, tag, processes)

        def typescript(tag: str, processes: int = processes) -> Trial:
            return ts_peer.trial(config, infra, workload, tag, processes)

        if config.distributed:
            lanes.append(Lane(Cell("flowcraft", config.backend, name, processes, config.worker_concurrency),
                              f"flowcraft {config.backend} {name} {processes}w", ours))
        if config.celery and workload.celery:
            lanes.append(Lane(Cell(CELERY, f"celery/{config.celery_pool}", name, processes,
                                   celery_concurrency(config)), f"celery {name} {processes}w", celery))
        if TS_FLOWCRAFT in config.peers and name in ts_peer.WORKLOADS:
            lanes.append(Lane(Cell(TS_FLOWCRAFT, "bullmq", name, processes, config.worker_concurrency),
                              f"{TS_FLOWCRAFT} {name} {processes}w", typescript))
        groups.append(lanes)
    return groups


def run(config: Config) -> Report:
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "machine": machine_info(),
        "versions": _versions(config),
    }
    report = Report(meta, [])
    if config.backend not in (IN_PROCESS, *PEERS):
        _check_backend_installed(config.backend)
    with Infrastructure(config) as infra:
        for name in config.workloads:
            workload = WORKLOADS[name]
            if workload.in_process_only and config.distributed:
                for processes in config.worker_counts:
                    report.cells.append(Cell("flowcraft", config.backend, name, processes, config.worker_concurrency,
                                             note="in-process only: skipped"))
                continue
            profiler = cProfile.Profile() if config.profile else None
            groups = _lanes(config, infra, workload, profiler)
            report.cells.extend(lane.cell for lanes in groups for lane in lanes)
            for index in range(config.trials):
                tag = f"{name}-{index}-{uuid.uuid4().hex[:8]}"
                for lanes in groups:
                    shift = index % len(lanes) if lanes else 0  # rotate who goes first, trial by trial
                    for lane in lanes[shift:] + lanes[:shift]:
                        if lane.cell.failed:
                            continue
                        try:
                            with _progress(f"{lane.label} trial {index + 1}/{config.trials}"):
                                trial = lane.measure(f"{tag}-{lane.cell.processes}w")
                        except BenchmarkError as exc:
                            _record_failure(report, lane.cell, exc)
                        else:
                            lane.cell.trials.append(trial)
                            _print_trial(lane.cell, trial)
            if profiler is not None:
                report.profiles[name] = _profile_rows(profiler)
            for lanes in groups:
                ours = [lane.cell for lane in lanes if lane.cell.system == "flowcraft" and lane.cell.trials]
                for lane in lanes:
                    if ours and lane.cell.system != "flowcraft" and lane.cell.trials:
                        report.comparisons.append(compare(ours[0], lane.cell))
    report.meta["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report.meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report


def _record_failure(report: Report, cell: Cell, error: BenchmarkError) -> None:
    """A workload that fails on one system is reported (and its remaining trials skipped); the others run."""
    cell.failed = True
    cell.note = f"failed: {error}"
    report.failures.append(f"{cell.system} {cell.backend} {cell.workload}: {error}")
    console.print(f"[red]{cell.system} {cell.backend} {cell.workload} failed:[/red] {error}")


def _check_backend_installed(name: str) -> None:
    from flowcraft.errors import FlowcraftError
    from flowcraft.plugins import registry

    try:
        registry().preset(name)
    except FlowcraftError as exc:
        hint = getattr(exc, "hint", "")
        raise BenchmarkError(f"{exc}" + (f" ({hint})" if hint else "")) from None


def _versions(config: Config) -> dict[str, str]:
    import importlib.metadata

    names = ["flowcraft-core", "rich"]
    if config.celery:
        names += ["celery", "kombu", "redis"]
    if config.backend not in (IN_PROCESS, *PEERS, "sqlite"):
        names.append(f"flowcraft-{config.backend}")
    out = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    if TS_FLOWCRAFT in config.peers:
        from benchmarks import ts_peer

        out.update(ts_peer.versions())
    return out


def compare(ours: Cell, peer: Cell) -> dict[str, Any]:
    """Ratios of medians, ours / the peer's at the same worker count (throughput: >1 = ours faster; latency,
    CPU: <1 = ours cheaper)."""
    out: dict[str, Any] = {"workload": ours.workload, "workers": ours.processes, "flowcraft": ours.backend,
                           "peer": peer.system, "peer_backend": peer.backend}
    for metric in METRICS:
        a, b = ours.spread(metric), peer.spread(metric)
        out[metric] = {"flowcraft": a.median if a else None, "peer": b.median if b else None,
                       "ratio": (a.median / b.median) if a and b and b.median else None}
    return out


@contextlib.contextmanager
def _progress(text: str) -> Iterator[None]:
    """A spinner on a terminal only (its refresh thread would otherwise count as harness CPU for nothing)."""
    if not console.is_terminal:
        yield
        return
    with console.status(text):
        yield


def _print_trial(cell: Cell, trial: Trial) -> None:
    parts = [f"{trial.runs_per_s:9.1f} runs/s {trial.nodes_per_s:8.0f} nodes/s"]
    if trial.p50_ms is not None and trial.p95_ms is not None:
        parts.append(f"p50 {trial.p50_ms:.1f} ms p95 {trial.p95_ms:.1f} ms")
    if trial.cpu_us_per_node is not None:
        parts.append(f"{trial.cpu_us_per_node:.0f} CPU us/node (client {trial.client_cpu_us_per_node:.0f})")
    if trial.redis_cpu_us_per_node is not None:
        parts.append(f"+{trial.redis_cpu_us_per_node:.0f} Redis")
    elif trial.server_cpu_us_per_node is not None:
        parts.append(f"+{trial.server_cpu_us_per_node:.0f} server")
    if trial.round_trips_per_node is not None:
        parts.append(f"{trial.round_trips_per_node:.2f} round trips/node")
    if trial.sequential_round_trips_per_node is not None:
        parts.append(f"{trial.sequential_round_trips_per_node:.2f} sequential")
    if trial.idle_round_trips_per_s is not None:
        parts.append(f"idle {trial.idle_round_trips_per_s:.0f}/s")
    if trial.commands_per_node is not None:
        parts.append(f"{trial.commands_per_node:.1f} redis cmds/node")
    if trial.worker_requests_per_node is not None:
        detail = ", ".join(f"{name} {n:.2f}" for name, n in trial.worker_requests.items())
        parts.append(f"worker requests/node {trial.worker_requests_per_node:.2f} ({detail})")
    if trial.floor_msgs_per_s and trial.floor_fraction is not None:
        parts.append(f"raw queue floor {trial.floor_msgs_per_s:.0f} msgs/s ({trial.floor_fraction:.0%})")
    console.print(f"[dim]{cell.system:12} {cell.backend:14} {cell.workload:10} {cell.processes}w {trial.runs:5} runs: "
                  f"{', '.join(parts)}[/dim]")


def _profile_rows(profiler: cProfile.Profile, limit: int = 25) -> list[dict[str, Any]]:
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{_short_path(filename)}:{line}({function})", "calls": calls,
                     "tottime": round(tottime, 4), "cumtime": round(cumtime, 4)})
    rows.sort(key=lambda r: -r["tottime"])
    return rows[:limit]


def _short_path(filename: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --------------------------------------------------------------------------- output


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _fmt_spread(spread: Spread | None, digits: int = 0, show_range: bool = True) -> str:
    if spread is None:
        return "—"
    if spread.min == spread.max or not show_range:
        return _fmt(spread.median, digits)
    return f"{_fmt(spread.median, digits)} [dim]({_fmt(spread.min, digits)}-{_fmt(spread.max, digits)})[/dim]"


#: table columns: (header, metric, digits, show min-max)
COLUMNS = (
    ("runs/s", "runs_per_s", 1, True),
    ("nodes/s", "nodes_per_s", 0, True),
    ("p50 ms", "p50_ms", 1, True),
    ("p95 ms", "p95_ms", 1, True),
    ("CPU us/node", "cpu_us_per_node", 0, False),
    ("Redis CPU us/node", "redis_cpu_us_per_node", 0, False),
    ("server CPU us/node", "server_cpu_us_per_node", 0, False),
    ("round trips/node", "round_trips_per_node", 2, False),
    ("seq. round trips/node", "sequential_round_trips_per_node", 2, False),
    ("redis cmds/node", "commands_per_node", 1, False),
    ("worker requests/node", "worker_requests_per_node", 2, False),
    ("raw floor msgs/s", "floor_msgs_per_s", 0, True),
    ("of floor", "floor_fraction", 2, False),
)


#: the cost-per-node summary: what predicts scaling on a machine where the systems starve each other
COST_COLUMNS = (
    ("nodes/s", "nodes_per_s", 0),
    ("worker+client CPU us/node", "cpu_us_per_node", 0),
    ("client share", "client_cpu_us_per_node", 0),
    ("Redis CPU us/node", "redis_cpu_us_per_node", 0),
    ("Redis-bound nodes/s", None, 0),
    ("round trips/node", "round_trips_per_node", 2),
    ("worker requests/node", "worker_requests_per_node", 2),
    ("nodes/s / raw floor", "floor_fraction", 2),
)


def redis_bound(cell: Cell) -> float | None:
    """The node rate at which this system's Redis CPU per node fills one core (Redis runs commands on one)."""
    spread = cell.spread("redis_cpu_us_per_node")
    return 1e6 / spread.median if spread and spread.median else None


def cost_table(report: Report) -> Table:
    table = Table(title="cost per node by system and worker count (medians over trials)")
    for column in ("workload", "workers", "system"):
        table.add_column(column)
    for header, *_ in COST_COLUMNS:
        table.add_column(header, justify="right")
    cells = sorted((c for c in report.cells if c.trials), key=lambda c: (c.workload, c.processes))
    for cell in cells:
        values = []
        for _, metric, digits in COST_COLUMNS:
            spread = cell.spread(metric) if metric else None
            values.append(_fmt(spread.median if spread else redis_bound(cell) if metric is None else None, digits))
        system = cell.system if cell.system != "flowcraft" else f"flowcraft {cell.backend}"
        table.add_row(cell.workload, "in-proc" if cell.processes == 0 else str(cell.processes), system, *values)
    return table


def print_report(report: Report) -> None:
    machine = report.meta["machine"]
    load = machine.get("loadavg_start") or []
    title = f"flowcraft benchmarks — {machine['nproc']} cores, Python {machine['python']}"
    if load:
        title += f", load avg {load[0]:.2f} at start"
    table = Table(title=title, caption="median (min-max) over trials. CPU: client + worker processes; Redis CPU: "
                                       "INFO cpu of the Redis; server: the redis/moto this harness started "
                                       "(/proc). Round trips: requests the server read (Redis: a pipeline or "
                                       "script is one; moto: HTTP requests). Redis cmds include those run "
                                       "inside Lua scripts.")
    for column in ("system", "backend", "workload"):
        table.add_column(column)
    for column in ("procs x conc", "runs x trials", *(c[0] for c in COLUMNS)):
        table.add_column(column, justify="right")
    for cell in report.cells:
        if not cell.trials:
            table.add_row(cell.system, cell.backend, cell.workload, "", "", cell.note or "no trials")
            continue
        procs = "in-proc" if cell.processes == 0 else f"{cell.processes}x{cell.concurrency}"
        table.add_row(cell.system, cell.backend, cell.workload, procs, f"{cell.trials[0].runs}x{len(cell.trials)}",
                      *(_fmt_spread(cell.spread(metric), digits, spread) for _, metric, digits, spread in COLUMNS))
    console.print(table)
    console.print(cost_table(report))
    if report.comparisons:
        ratio_table = Table(title="flowcraft / peer at the same worker count, medians (throughput: >1 = flowcraft "
                                  "faster; latency, CPU, commands: <1 = flowcraft cheaper)")
        for column in ("workload", "workers", "peer"):
            ratio_table.add_column(column)
        for header, *_ in COLUMNS:
            ratio_table.add_column(header, justify="right")
        for comparison in report.comparisons:
            cells = []
            for _, metric, digits, _ in COLUMNS:
                entry = comparison[metric]
                ratio = entry["ratio"]
                cells.append(f"{_fmt(entry['flowcraft'], digits)} / {_fmt(entry['peer'], digits)} = "
                             f"[bold]{'—' if ratio is None else f'{ratio:.2f}x'}[/bold]")
            ratio_table.add_row(comparison["workload"], str(comparison["workers"]), comparison["peer"], *cells)
        console.print(ratio_table)
    for name, rows in report.profiles.items():
        profile_table = Table(title=f"cProfile, in-process throughput phase: {name} (top by own time)")
        profile_table.add_column("function")
        for column in ("calls", "tottime s", "cumtime s"):
            profile_table.add_column(column, justify="right")
        for row in rows[:15]:
            profile_table.add_row(row["function"], str(row["calls"]), f"{row['tottime']:.3f}",
                                  f"{row['cumtime']:.3f}")
        console.print(profile_table)


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        report = run(config)
    except BenchmarkError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        return 1
    print_report(report)
    if config.json_path is not None:
        write_json(report, config.json_path)
        console.print(f"[dim]results written to {config.json_path}[/dim]")
    if report.failures:
        console.print(f"[red]{len(report.failures)} workload(s) failed[/red]")
        return 1
    return 0
