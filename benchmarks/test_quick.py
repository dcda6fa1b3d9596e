"""CI smoke test of the benchmark harness: quick mode, in-process (memory) backend only.

It checks that every workload ran and produced figures, never how fast (tests never assert on time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.workloads import WORKLOADS, app, expected_output  # noqa: E402


def test_quick_memory_produces_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "quick.json"
    assert harness.main(["--backend", "memory", "--quick", "--json", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["meta"]["machine"]["nproc"] >= 1
    cells = {cell["workload"]: cell for cell in report["results"]}
    assert set(cells) == set(WORKLOADS)
    for name, cell in cells.items():
        assert cell["system"] == "flowcraft" and cell["backend"] == "memory"
        assert len(cell["trials"]) == 1, name
        trial = cell["trials"][0]
        assert trial["runs"] >= 2
        assert trial["nodes_per_run"] == WORKLOADS[name].nodes
        assert trial["runs_per_s"] > 0 and trial["nodes_per_s"] > 0
        assert len(trial["latencies_ms"]) == 5
        assert trial["p50_ms"] is not None and trial["p95_ms"] is not None
        assert cell["summary"]["nodes_per_s"]["median"] > 0
    assert "nodes/s" in capsys.readouterr().out


async def test_workloads_produce_expected_outputs() -> None:
    from flowcraft import FlowRuntime

    async with FlowRuntime(app=app) as runtime:
        for name, workload in WORKLOADS.items():
            result = await runtime.run(name, 0, timeout=60)
            assert result.status == "completed", (name, result.errors)
            assert result.output == expected_output(name)
            assert len(result.outputs) == workload.nodes


def test_cli_options() -> None:
    config = harness.parse_args(["--backend", "sqlite", "--quick"])
    assert (config.runs, config.trials, config.latency_runs) == (20, 1, 5)
    assert "fanout1000" not in config.workloads  # in-process only
    assert config.worker_counts == [1, 2]  # every report: 1 and 2 workers, interleaved
    celery = harness.parse_args(["--backend", "celery"])
    assert celery.celery and celery.workloads == ["chain10", "diamond8"]
    peers = harness.parse_args(["--backend", "rq", "--peer", "ts-flowcraft", "--celery", "--workers", "2,1,2"])
    assert peers.peers == ["ts-flowcraft", "celery"] and peers.worker_counts == [1, 2]
    with pytest.raises(SystemExit):
        harness.parse_args(["--workers", "0"])
    with pytest.raises(SystemExit):
        harness.parse_args(["--workloads", "nope"])


def test_worker_request_counts_kept_apart_from_redis_commands() -> None:
    from benchmarks.backend_servers import REQUEST_PREFIX

    commands = {harness.READS: 40, "evalsha": 30, f"{REQUEST_PREFIX}queue GET": 10, f"{REQUEST_PREFIX}cosmos POST": 30}
    trial = harness.make_trial(2, 10, 0.0, 1.0, 1.0, [], commands)
    assert trial.round_trips_per_node == 2.0 and trial.commands_per_node == 1.5
    assert trial.worker_requests == {"cosmos POST": 1.5, "queue GET": 0.5}
    assert trial.worker_requests_per_node == 2.0


def test_worker_counters_read_by_signal(tmp_path: Path) -> None:
    """The hook's counts come back through SIGUSR1 and the worker's log, twice, summed over processes."""
    import subprocess
    import time

    from benchmarks.backend_servers import REQUEST_PREFIX, WorkerCounters

    script = ("import asyncio\n"
              "from benchmarks.backend_servers import COUNTS, report_on_signal\n"
              "async def main():\n"
              "    report_on_signal()\n"
              "    COUNTS['queue GET'] += 3\n"
              "    print('ready', flush=True)\n"
              "    await asyncio.sleep(30)\n"
              "asyncio.run(main())\n")
    processes = []
    try:
        for index in range(2):
            log = tmp_path / f"w{index}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen([sys.executable, "-c", script], stdout=out, cwd=REPO_ROOT,
                                           env=harness.child_env())
            processes.append((process, log))
        deadline = time.monotonic() + 30
        while not all("ready" in log.read_text() for _, log in processes):
            assert time.monotonic() < deadline and all(p.poll() is None for p, _ in processes)
            time.sleep(0.02)
        counters = WorkerCounters(processes)
        assert counters.snapshot() == {f"{REQUEST_PREFIX}queue GET": 6}
        assert counters.snapshot() == {f"{REQUEST_PREFIX}queue GET": 6}
    finally:
        for process, _ in processes:
            process.kill()
            process.wait()


def test_backend_servers_fresh_options() -> None:
    from benchmarks.backend_servers import registered

    for backend in ("rabbitmq", "azure", "kafka"):
        servers = registered(backend)
        assert servers is not None and servers.backend == backend
        options = servers({"redis_url": "redis://127.0.0.1:1/0"}).fresh_options("chain10-0-ab12cd34-2w")
        assert options["redis_url"] == "redis://127.0.0.1:1/0" and "chain10-0-ab12cd34-2w" in options["key_prefix"]
    azure = registered("azure")
    assert azure is not None
    name = azure({}).fresh_options("Chain10_-0-AB-1w")["queue_name"]
    assert name == name.lower() and "--" not in name and "_" not in name and 3 <= len(name) <= 63
    assert registered("sqs") is None
