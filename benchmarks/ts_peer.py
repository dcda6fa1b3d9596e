"""The TypeScript original as a peer: Flowcraft 2.10.1 + ``@flowcraft/bullmq-adapter`` 1.7.1 on the same Redis.

``python -m benchmarks --backend rq --peer ts-flowcraft`` installs the pinned npm packages of
``benchmarks/ts_flowcraft/package.json`` (and its lock) once into a cache folder, then per trial starts
``node worker.mjs`` worker processes and one long-lived ``node client.mjs`` that the harness drives over
stdin/stdout (one JSON line per phase), so the Redis counters and the CPU meter bracket exactly one phase.
Its keys live in Redis database 2 (ours 0, Celery 1), under a fresh queue name per trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import (
    READS,
    REPO_ROOT,
    BenchmarkError,
    Config,
    CpuMeter,
    Infrastructure,
    ProcessGroup,
    Trial,
    child_env,
    idle_round_trips,
    make_trial,
    session_cpu_seconds,
    set_sequential,
    with_db,
)

if TYPE_CHECKING:
    from benchmarks.workloads import Workload

NAME = "ts-flowcraft"
SOURCES = REPO_ROOT / "benchmarks" / "ts_flowcraft"
SCRIPTS = ("worker.mjs", "client.mjs", "workflows.mjs")
MANIFESTS = ("package.json", "package-lock.json")
READY_MARKER = "ts-flowcraft worker ready"
REDIS_DB = 2
#: keyspace events of string commands: the adapter's SET of workflow:status:<run> is the completion signal
KEYSPACE_EVENTS = "K$"
WORKLOADS = frozenset({"chain10", "diamond8"})


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flowcraft-bench" / NAME


def install(root: Path | None = None) -> Path:
    """The folder holding the pinned packages and the scripts, installed with ``npm install`` on first use.

    The folder is named by a hash of the manifests, so changing a pin installs afresh; ``npm ci`` is not
    used because it refuses a lock made on another platform (optional native entries of msgpackr)."""
    for program in ("node", "npm"):
        if shutil.which(program) is None:
            raise BenchmarkError(f"--peer {NAME} needs {program} (Node.js 20 or later) on PATH")
    digest = hashlib.sha256(b"".join((SOURCES / name).read_bytes() for name in MANIFESTS)).hexdigest()[:16]
    folder = (root or cache_root()) / digest
    if not (folder / "node_modules" / "@flowcraft" / "bullmq-adapter").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for name in MANIFESTS:
            shutil.copy(SOURCES / name, folder / name)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchmarkError(f"npm install in {folder} failed:\n{done.stderr[-2000:]}")
    for name in SCRIPTS:  # the scripts are copied each time: they import the packages next to them
        shutil.copy(SOURCES / name, folder / name)
    return folder


def versions() -> dict[str, str]:
    """node and the pinned npm packages, for the report's metadata."""
    pins = json.loads((SOURCES / "package.json").read_text())["dependencies"]
    out = {f"npm:{name}": str(version) for name, version in pins.items()}
    with contextlib.suppress(OSError):
        out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return out


class Client:
    """``node client.mjs``: one JSON command per line in, one JSON answer per line out."""

    def __init__(self, folder: Path, env: dict[str, str], log_path: Path) -> None:
        self.log = open(log_path, "wb")  # closed in close()
        self.process = subprocess.Popen(["node", "client.mjs"], cwd=folder, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        self.log_path = log_path

    def call(self, cmd: str, workload: str, runs: int) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, "workload": workload, "runs": runs}).encode() + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise BenchmarkError(f"{NAME} client exited (code {self.process.wait()}): "
                                 f"{self.log_path.read_text('utf-8', 'replace')[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise BenchmarkError(f"{NAME} {workload} {cmd}: {answer.get('error')}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@contextlib.contextmanager
def keyspace_notifications(infra: Infrastructure) -> Any:
    """Turn on the keyspace events the client waits on for this trial only (they cost Redis a little per
    string write, which this peer's Redis CPU figure then includes), restoring the previous setting."""
    import redis

    assert infra.redis_url is not None
    admin = redis.Redis.from_url(infra.redis_url)
    try:
        previous = str(admin.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
        admin.config_set("notify-keyspace-events", KEYSPACE_EVENTS)
        try:
            yield
        finally:
            admin.config_set("notify-keyspace-events", previous)
    except redis.ResponseError as exc:
        raise BenchmarkError(f"{NAME} needs CONFIG SET notify-keyspace-events on the Redis: {exc}") from None
    finally:
        admin.close()


def trial(config: Config, infra: Infrastructure, workload: Workload, tag: str, workers: int) -> Trial:
    """One trial of the TS peer with ``workers`` node worker processes, measured like ours."""
    if workload.name not in WORKLOADS:
        raise BenchmarkError(f"{NAME} has no {workload.name} workload")
    folder = infra.ts_flowcraft_folder()
    assert infra.redis_url is not None and infra.counter is not None
    if infra.owns_redis:
        infra.counter.flushdb(REDIS_DB)
    env = child_env({"FC_REDIS_URL": with_db(infra.redis_url, REDIS_DB), "FC_QUEUE": f"fcbench-ts-{tag}",
                     "FC_CONCURRENCY": str(config.worker_concurrency),
                     "FC_TIMEOUT_MS": str(int(config.timeout * 1000))})
    counter = infra.counter
    runs = config.runs_for(workload)
    logs = infra.tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup(NAME, [["node", str(folder / "worker.mjs")]] * workers, env, logs, READY_MARKER)
    with keyspace_notifications(infra), group:
        client = Client(folder, env, logs / f"{NAME}-client-{tag}.log")
        try:
            if config.warmup_for(workload):
                client.call("batch", workload.name, config.warmup_for(workload))
            idle_rate = idle_round_trips(counter, config.idle_seconds)
            before = counter.snapshot()
            client_cpu = session_cpu_seconds([client.process.pid])
            meter = CpuMeter(group.pids, infra.server_pids)
            answer = client.call("batch", workload.name, runs)
            _, worker_cpu, server_cpu = meter.stop()
            client_cpu = session_cpu_seconds([client.process.pid]) - client_cpu
            commands = counter.delta(before, counter.snapshot())
            latencies: list[float] = []
            sequential: int | None = None
            began = time.monotonic()
            if config.latency_runs:
                before = counter.snapshot()
                latencies = client.call("singles", workload.name, config.latency_runs)["latencies_ms"]
                sequential = counter.delta(before, counter.snapshot()).get(READS, 0)
            elapsed = time.monotonic() - began
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc} (worker logs: {group.keep_logs(config, tag)})") from None
        finally:
            client.close()
    result = make_trial(runs, workload.nodes, answer["submitted"], answer["completed"], answer["observed"],
                        latencies, commands, (client_cpu, worker_cpu, server_cpu))
    if sequential is not None:
        set_sequential(result, sequential, elapsed, idle_rate, config.latency_runs * workload.nodes)
    return result
