"""Operating runs from the `flowcraft` command (issue 18, items 1, 2 and 8): `status` shows the timeline
(table and --json), `run --wait` shows retries and skips as they happen, `runs` filters by age, `logs`
prints a run's history, and a real `flowcraft worker` process logs failures and retries at INFO (text and
--log-format json, with the run and node ids), counts them in its summary and calls the App's listeners."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowcraft.cli import cli

APP_MODULE = "cli_operate_app"
APP_SOURCE = '''
import json, os
from flowcraft import App, Flow, NodeResult

def flaky(ctx):
    if ctx.attempt < 2:
        raise ConnectionError(f"flaky attempt {ctx.attempt}")
    return NodeResult(output=1, action="yes")

ops = Flow("ops")
ops.node("flaky", flaky, retries=2, retry_delay=0.01)
ops.node("yes", lambda ctx: ctx.input + 1)
ops.node("no", lambda ctx: "never")
ops.edge("flaky", "yes", action="yes").edge("flaky", "no", action="no")

def explode(ctx):
    raise ValueError("boom")

broken = Flow("broken").node("explode", explode, retries=1, retry_delay=0.01)

def record(event):
    path = os.environ.get("FLOWCRAFT_TEST_EVENTS")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"name": event.name, "node_id": event.node_id}) + "\\n")

app = App(flows=[ops, broken], listeners=[record])
'''


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Path:
    return make_project(APP_MODULE, APP_SOURCE, sqlite_config=True)


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, list(args), catch_exceptions=False)


def test_status_logs_and_run_wait_show_retries_and_skips(project: Path) -> None:
    assert invoke("setup").exit_code == 0
    ran = invoke("run", "ops", "--wait", "--inline")
    assert ran.exit_code == 0, ran.output
    run_id = json.loads(ran.stdout)["run_id"]
    assert "attempt 1 failed: ConnectionError: flaky attempt 1" in ran.stderr
    assert "flaky after 2 attempts" in ran.stderr and "no skipped" in ran.stderr and "✓ yes" in ran.stderr

    data = json.loads(invoke("status", run_id, "--json").stdout)
    timeline = {visit["node_id"]: visit for visit in data["timeline"]}
    assert timeline["flaky"]["state"] == "done" and len(timeline["flaky"]["attempts"]) == 2
    assert timeline["flaky"]["attempts"][0]["error"] == "ConnectionError: flaky attempt 1"
    assert timeline["no"]["state"] == "skipped" and timeline["yes"]["state"] == "done"

    table = invoke("status", run_id)
    assert table.exit_code == 0
    assert "timeline" in table.stdout and "(recovered) ConnectionError: flaky attempt 1" in table.stdout
    assert "skipped" in table.stdout

    history = invoke("logs", run_id)
    assert history.exit_code == 0
    text = history.stdout
    assert "flaky: attempt 1 failed" in text and "retrying" in text and "no: skipped" in text
    assert text.index("started") < text.index("attempt 1 failed") < text.index("run completed")
    as_json = [json.loads(line) for line in invoke("logs", run_id, "--json").stdout.splitlines()]
    assert as_json[0]["event"] == "run:start" and as_json[-1]["event"] == "run:finish"
    assert {"node:error", "node:skipped", "node:finish"} <= {line["event"] for line in as_json}

    failed = invoke("run", "broken", "--wait", "--inline")
    assert failed.exit_code == 1 and "explode failed: ValueError: boom" in failed.stderr
    failed_id = json.loads(failed.stdout)["run_id"]
    assert "explode: failed after 2 attempt(s): ValueError: boom" in invoke("logs", failed_id).stdout


def test_runs_filter_by_age_status_and_blueprint(project: Path) -> None:
    assert invoke("setup").exit_code == 0
    run_id = json.loads(invoke("run", "ops", "--wait", "--inline").stdout)["run_id"]
    assert run_id in invoke("runs", "--since", "1h").stdout
    assert run_id in invoke("runs", "--since", "1h", "--status", "completed", "--blueprint", "ops").stdout
    assert "no runs" in invoke("runs", "--older-than", "1h").stdout
    assert "no runs" in invoke("runs", "--since", "1h", "--blueprint", "broken").stdout
    bad = invoke("runs", "--since", "yesterday")
    assert bad.exit_code == 1
    assert bad.output.splitlines() == ["error: --since: expected an age like 30s, 15m, 2h or 7d, got 'yesterday'",
                                       "hint: write a number with a unit s, m, h or d"]
    missing = invoke("logs", "no-such-run")
    assert missing.exit_code == 1 and "no run with id 'no-such-run'" in missing.output


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_worker_logs_failures_and_retries_counts_them_and_calls_listeners(project: Path, log_format: str) -> None:
    assert invoke("setup").exit_code == 0
    events = project / "events.jsonl"
    env = {**__import__("os").environ, "FLOWCRAFT_TEST_EVENTS": str(events)}
    worker = subprocess.Popen([sys.executable, "-m", "flowcraft.cli", "worker", "--concurrency", "2",
                               "--log-format", log_format], cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(worker.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any(" ready on backend " in line for line in output) and time.monotonic() < deadline:
            time.sleep(0.05)
        ok = invoke("run", "ops", "--wait", "--timeout", "30")
        assert ok.exit_code == 0, ok.output + "".join(output)
        failed = invoke("run", "broken", "--wait", "--timeout", "30")
        assert failed.exit_code == 1
        run_id = json.loads(failed.stdout)["run_id"]
        # as the quickstart and the demo's closing hint say: no --app, the blueprint the worker published
        (project / "no-app.toml").write_text('backend = "sqlite"\n[options]\npath = "runs.db"\n', encoding="utf-8")
        published = invoke("--config", "no-app.toml", "run", "ops", "--wait", "--timeout", "30")
        assert published.exit_code == 0, published.output
        assert json.loads(published.stdout)["output"] == 2 and "attempt 1 failed" in published.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        reader.join(timeout=5)
    stderr = "".join(output)
    assert worker.returncode == 0, stderr
    if log_format == "json":
        records: list[dict[str, Any]] = []
        for line in output:
            if line.startswith("{"):
                records.append(json.loads(line))
        retry = next(r for r in records if r.get("event") == "node:retry" and r["node_id"] == "flaky")
        assert retry["level"] == "INFO" and retry["attempt"] == 2 and retry["worker_id"].startswith("w-")
        failure = next(r for r in records if r.get("event") == "node:failed")
        assert failure["run_id"] == run_id and failure["node_id"] == "explode"
    else:
        assert "INFO flowcraft.engine: node flaky of run" in stderr and "retry 2 of 3" in stderr
        assert f"node explode of run {run_id} failed the run: ValueError: boom" in stderr
    summary = next(line for line in output if " stopped: " in line)
    assert "4 node attempts failed (3 retried), 1 runs failed, 0 dead-lettered" in summary
    names = [json.loads(line)["name"] for line in events.read_text().splitlines()]
    assert {"node:start", "node:error", "node:retry", "node:finish", "node:skipped", "run:finish"} <= set(names)


def test_reconcile_logs_each_action_with_the_run_and_node_ids(project: Path) -> None:
    assert invoke("setup").exit_code == 0
    run_id = invoke("run", "ops").stdout.strip()  # no worker: its first job stays pending
    time.sleep(0.05)
    result = invoke("reconcile", "--threshold", "0", "--log-format", "json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (requeued,) = [r for r in records if r.get("event") == "reconciler:requeue"]
    assert requeued["run_id"] == run_id and requeued["node_id"] == "flaky" and requeued["level"] == "INFO"
    assert "requeued_jobs=1" in result.stdout


def test_logs_follow_prints_until_the_run_ends(project: Path) -> None:
    assert invoke("setup").exit_code == 0
    run_id = invoke("run", "ops").stdout.strip()  # no worker: it stays pending until cancelled
    # cancelled by another process: CliRunner swaps sys.stdout while it runs, so a second invoke in a thread could
    # catch the follower's last lines
    canceller = threading.Timer(1.0, lambda: subprocess.run([sys.executable, "-m", "flowcraft.cli", "cancel", run_id],
                                                            cwd=project, check=True, capture_output=True))
    canceller.start()
    started = time.monotonic()
    followed = invoke("logs", run_id, "--follow")
    canceller.join()
    assert followed.exit_code == 0, followed.output
    assert time.monotonic() - started >= 0.9
    lines = followed.stdout.splitlines()
    assert "started" in lines[0] and "flaky: pending" in followed.stdout and lines[-1].endswith("run cancelled")
