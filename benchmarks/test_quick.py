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
