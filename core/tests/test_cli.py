"""The `flowcraft` command (through click's CliRunner, and as real processes for workers and the demo),
and lint_blueprint."""

from __future__ import annotations

import json
import os
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

from flowcraft import App, Flow
from flowcraft.cli import cli, mermaid
from flowcraft.lint import lint_blueprint
from flowcraft.model import Blueprint, EdgeDefinition, NodeDefinition

ROOT = Path(__file__).resolve().parents[2]
APP_MODULE = "cli_test_app"
APP_SOURCE = '''
from flowcraft import App, Flow

quick = Flow("quick")
quick.node("a", lambda ctx: 1)
quick.node("b", lambda ctx: ctx.input + 1)
quick.edge("a", "b")

greet = Flow("greet", version="1")
greet.node("hello", lambda ctx: {"name": (ctx.input or {}).get("name", "world")})
greet.wait("approval")
greet.node("done", lambda ctx: f"hello {ctx.input}")
greet.node("rejected", lambda ctx: "rejected")
greet.edge("hello", "approval")
greet.edge("approval", "done", action="approve")
greet.edge("approval", "rejected", action="reject")

def explode(ctx):
    raise ValueError("boom")

broken = Flow("broken")
broken.node("explode", explode)

app = App(flows=[quick, greet, broken])


def factory():
    raise RuntimeError("factory broke")


def leaky():
    raise ConnectionError("cannot reach redis://:hunter2@h:1/0")
'''


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Path:
    """A working directory with an importable app module and no FLOWCRAFT_* configuration."""
    return make_project(APP_MODULE, APP_SOURCE)


@pytest.fixture
def sqlite_project(project: Path) -> Path:
    (project / "flowcraft.toml").write_text(f'backend = "sqlite"\napp = "{APP_MODULE}:app"\n'
                                            '[options]\npath = "runs.db"\n', encoding="utf-8")
    return project


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def json_of(result: Result) -> Any:
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------------------------- errors
def test_error_is_one_red_line_plus_hint(project: Path) -> None:
    result = invoke("status", "some-run", "--backend", "nosuch")
    assert result.exit_code == 1
    error, hint = lines(result)
    assert error.startswith('error: backend "nosuch" is not installed (installed: ')
    assert hint == ("hint: install the plugin that provides 'nosuch', or run `flowcraft backends` to see what is "
                    "installed")


def test_debug_shows_the_traceback(project: Path) -> None:
    result = invoke("--debug", "status", "some-run", "--backend", "nosuch")
    assert result.exit_code == 1
    assert "Traceback" in result.output
    assert lines(result)[-2].startswith('error: backend "nosuch" is not installed')


def test_unexpected_exception_is_one_line_too(project: Path) -> None:
    result = invoke("run", "quick", "--backend", "memory", "--app", f"{APP_MODULE}:factory")
    assert result.exit_code == 1
    assert lines(result) == ["error: RuntimeError: factory broke",
                             "hint: this looks like a bug; run with --debug to see the traceback"]


def test_error_lines_mask_secrets(project: Path) -> None:
    result = invoke("run", "quick", "--backend", "memory", "--app", f"{APP_MODULE}:leaky")
    assert result.exit_code == 1
    assert lines(result)[0] == "error: ConnectionError: cannot reach redis://:***@h:1/0"
    assert "hunter2" not in result.output


def test_failed_run_prints_result_and_exits_1(project: Path) -> None:
    result = invoke("run", "broken", "--backend", "memory", "--app", f"{APP_MODULE}:app")
    assert result.exit_code == 1
    data = json_of(result)
    assert data["status"] == "failed"
    assert f"error: run {data['run_id']} failed: ValueError: boom" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["run"], ["run", "quick", "--input", "{not json"], ["nosuchcommand"],
                                  ["worker", "--concurrency", "0"], ["worker", "--backlog", "-1"],
                                  ["run", "quick", "-o", "novalue"]])
def test_usage_errors_exit_2(project: Path, args: list[str]) -> None:
    assert invoke(*args).exit_code == 2


def test_option_without_key_does_not_echo_the_value(project: Path) -> None:
    result = invoke("config", "-o", "redis://:hunter2@h:6379/0")
    assert result.exit_code == 2
    assert "hunter2" not in result.output
    assert "expected KEY=VALUE, got a value without a 'KEY='" in result.output


def test_config_with_an_uninstalled_backend_fails(project: Path) -> None:
    result = invoke("config", "--backend", "nope")
    assert result.exit_code == 1
    assert lines(result)[0].startswith('error: backend "nope" is not installed (installed: ')


def test_config_with_an_uninstalled_component_fails(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCRAFT_QUEUE", "nope")
    result = invoke("config")
    assert result.exit_code == 1
    assert lines(result)[0] == "error: queue 'nope' is not installed"


def test_unreachable_redis_is_one_line_naming_the_server_at_once(project: Path) -> None:
    pytest.importorskip("flowcraft_rq")
    started = time.monotonic()
    result = invoke("status", "some-run", "--backend", "rq", "-o", "redis_url=redis://:hunt@er2@127.0.0.1:1/0")
    assert time.monotonic() - started < 5  # no 40 s of reconnect attempts to a server never reached
    assert result.exit_code == 1
    error, hint = lines(result)
    assert error.startswith("error: cannot connect to Redis at redis://:***@127.0.0.1:1/0: ")
    assert hint.startswith("hint: check that the server runs")
    assert "hunt" not in result.output


def test_missing_app_says_how_to_give_one(project: Path) -> None:
    result = invoke("run", "quick", "--backend", "memory")
    assert result.exit_code == 1
    assert lines(result)[0] == "error: running 'quick' in this process needs the app with its implementations"
    assert lines(result)[1].startswith("hint: pass --app package.module:app")


def test_bad_config_file_is_reported(project: Path) -> None:
    (project / "flowcraft.toml").write_text("backend = \n", encoding="utf-8")
    result = invoke("config")
    assert result.exit_code == 1
    assert lines(result)[0].startswith(f"error: {project / 'flowcraft.toml'}: invalid TOML")


# ---------------------------------------------------------------------------------------------- listing, config
def test_backends_lists_presets_and_components(project: Path) -> None:
    result = invoke("backends")
    assert result.exit_code == 0
    assert "memory" in result.output
    assert "sqlite (selected)" in result.output
    assert "provided by flowcraft-core" in result.output and "(built-in)" in result.output
    for kind in ("queue", "context", "status", "coordination"):
        assert kind in result.output


def test_backends_does_not_import_lazy_components(project: Path) -> None:
    code = ("import sys; from flowcraft.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['backends']); assert r.exit_code == 0, r.output; "
            "print('flowcraft.backends.sqlite' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_config_shows_sources_and_masks_secrets(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "flowcraft.toml").write_text('backend = "memory"\n[options]\npassword = "hunter2"\n',
                                            encoding="utf-8")
    monkeypatch.setenv("FLOWCRAFT_REDIS_URL", "redis://:hunter2@localhost:6379/0")
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["config", "-o", "prefix=x"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "env FLOWCRAFT_REDIS_URL" in result.output
    assert "command line" in result.output
    assert str(project / "flowcraft.toml") in result.output
    as_json = json.loads(invoke("config", "--json").stdout)
    assert as_json["options"] == {"password": "***", "redis_url": "redis://:***@localhost:6379/0"}


# ---------------------------------------------------------------------------------------------- runs
def test_run_wait_on_memory_prints_the_result(project: Path) -> None:
    result = invoke("run", "quick", "--backend", "memory", "--app", f"{APP_MODULE}:app")
    assert result.exit_code == 0, result.output
    data = json_of(result)
    assert (data["status"], data["output"], data["outputs"]) == ("completed", 2, {"a": 1, "b": 2})
    assert "2/2" in result.stderr  # the progress bar


def test_run_unknown_blueprint(project: Path) -> None:
    result = invoke("run", "nope", "--backend", "memory", "--app", f"{APP_MODULE}:app")
    assert result.exit_code == 1
    assert lines(result) == ["error: the app has no blueprint 'nope'", "hint: known blueprints: broken, greet, quick"]


def test_run_status_runs_resume_cancel_on_sqlite(sqlite_project: Path) -> None:
    setup = invoke("setup")
    assert setup.exit_code == 0, setup.output
    assert "backend sqlite is set up" in setup.output

    started = invoke("run", "greet", "--input", '{"name": "Ada"}', "--inline")
    assert started.exit_code == 0, started.output
    waiting = json_of(started)
    assert waiting["status"] == "awaiting"
    run_id = waiting["run_id"]

    status = invoke("status", run_id, "--json")
    assert json_of(status)["awaiting"] == [{"node_id": "approval", "visit": 0}]
    listed = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["runs", "--status", "awaiting"])
    assert run_id in listed.output

    bad_action = invoke("resume", run_id, "--action", "maybe")
    assert bad_action.exit_code == 1
    assert lines(bad_action)[0] == "error: node 'approval' has no edge for action 'maybe'"

    resumed = invoke("resume", run_id, "--action", "approve", "--output", '"yes"')
    assert resumed.exit_code == 0, resumed.output
    assert json_of(invoke("status", run_id, "--json"))["status"] == "running"

    second = json_of(invoke("run", "greet", "--inline"))
    assert invoke("cancel", second["run_id"]).exit_code == 0
    assert json_of(invoke("status", second["run_id"], "--json"))["status"] == "cancelled"
    again = invoke("cancel", second["run_id"])
    assert again.exit_code == 1
    assert lines(again) == [f"error: run {second['run_id']} is already cancelled; nothing to cancel"]

    missing = invoke("status", "no-such-run")
    assert lines(missing) == ["error: no run with id 'no-such-run'", "hint: list runs with `flowcraft runs`"]


def test_run_without_wait_prints_the_run_id(sqlite_project: Path) -> None:
    result = invoke("run", "quick")
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    assert json_of(invoke("status", run_id, "--json"))["status"] == "running"  # no worker yet


def test_reconcile_once_prints_stats(sqlite_project: Path) -> None:
    result = invoke("reconcile", "--threshold", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ("scanned=0 stalled_runs=0 reconciled_runs=0 failed_runs=0 requeued_jobs=0 "
                                     "purged_runs=0")


def test_worker_on_memory_is_refused(project: Path) -> None:
    result = invoke("worker", "--backend", "memory", "--app", f"{APP_MODULE}:app")
    assert result.exit_code == 1
    assert lines(result)[0].startswith("error: the memory backend lives inside one process")


def flowcraft_process(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "flowcraft.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_worker_processes_serve_runs_and_stop_on_sigterm(sqlite_project: Path) -> None:
    assert invoke("setup").exit_code == 0
    workers = flowcraft_process("worker", "--processes", "2", "--concurrency", "2", cwd=sqlite_project)
    assert workers.stderr is not None
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(workers.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while sum("on backend sqlite" in line for line in output) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # both workers have their signal handlers once they announce themselves
        result = invoke("run", "quick", "--wait", "--timeout", "30")
        assert result.exit_code == 0, result.output
        assert json_of(result)["output"] == 2
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.wait(timeout=30)
        reader.join(timeout=5)
    stderr = "".join(output)
    assert workers.returncode == 0, stderr
    assert stderr.count(" stopped: ") == 2
    assert "all worker processes stopped" in stderr


def test_worker_process_killed_is_restarted_and_the_fleet_keeps_serving(sqlite_project: Path) -> None:
    assert invoke("setup").exit_code == 0
    workers = flowcraft_process("worker", "--processes", "2", "--concurrency", "2", cwd=sqlite_project)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(workers.stderr or ()), daemon=True)
    reader.start()

    def wait_for(predicate: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert predicate(), f"{what} did not happen:\n{''.join(output)}"

    try:
        wait_for(lambda: sum("on backend sqlite" in line for line in output) >= 2, "two workers starting")
        started = next(line for line in output if line.startswith("started 2 worker processes"))
        victim = int(started.split("(pids ")[1].split(",")[0])
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: any(line.startswith("restarted worker process as pid") for line in output), "a restart")
        wait_for(lambda: sum("on backend sqlite" in line for line in output) >= 3, "the new worker starting")
        assert f"worker process {victim} died (killed by SIGKILL) after " in "".join(output)
        for _ in range(3):
            result = invoke("run", "quick", "--wait", "--timeout", "30")
            assert result.exit_code == 0, result.output
            assert json_of(result)["output"] == 2
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.wait(timeout=60)
        reader.join(timeout=5)
    stderr = "".join(output)
    assert workers.returncode == 0, stderr
    assert stderr.count(" stopped: ") == 2  # the survivor and the replacement; the killed one never got to say it
    assert "all worker processes stopped (1 restarts)" in stderr


def test_worker_supervisor_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    from flowcraft.engine.supervisor import Supervisor
    from flowcraft.errors import FlowcraftError

    logged: list[str] = []
    supervisor = Supervisor([sys.executable, "-c", "raise SystemExit(3)"], 2, log=logged.append, min_uptime=5,
                            max_start_failures=3, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(FlowcraftError, match=r"^worker processes keep exiting right after start \(3 times in a row "
                                             r"within 5s; the last, pid \d+, with exit code 3\); stopped the fleet"):
        supervisor.run(poll=0.02)
    assert time.monotonic() - started < 15
    died = [line for line in logged if " died (exit code 3) after " in line]
    assert len(died) >= 2 and all("restarting it in" in line for line in died)
    assert supervisor.pids == []


def test_graph_of_an_app_blueprint(project: Path) -> None:
    result = invoke("graph", "greet", "--app", f"{APP_MODULE}:app")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "flowchart TD",
        '    n0["hello"]',
        '    n1{{"approval<br/><small>wait</small>"}}',
        '    n2["done"]',
        '    n3["rejected"]',
        "    n0 --> n1",
        '    n1 -->|"approve"| n2',
        '    n1 -->|"reject"| n3',
    ]


def test_graph_of_a_file_labels_conditions_and_fallbacks(project: Path) -> None:
    blueprint = {
        "id": "g",
        "nodes": [{"id": "a b", "uses": "x", "config": {"fallback": "fb"}}, {"id": "c", "uses": "y"},
                  {"id": "fb", "uses": "z"}, {"id": "j", "uses": "j", "config": {"joinStrategy": "any"}}],
        "edges": [{"source": "a b", "target": "c", "action": "ok", "condition": 'result.output == "yes"'},
                  {"source": "c", "target": "j"}, {"source": "a b", "target": "j"}],
    }
    path = project / "g.json"
    path.write_text(json.dumps(blueprint), encoding="utf-8")
    result = invoke("graph", str(path), "--direction", "LR")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("flowchart LR\n")
    assert '    n0["a b<br/><small>x</small>"]' in text
    assert '    n0 -->|"ok / result.output == #quot;yes#quot;"| n1' in text
    assert '    n3["j<br/><small>join: any</small>"]' in text
    assert "    n0 -.->|fallback| n2" in text


def test_graph_unknown_argument(project: Path) -> None:
    result = invoke("graph", "nothing-here")
    assert result.exit_code == 1
    assert lines(result)[0] == "error: 'nothing-here' is neither a file nor a blueprint id (no app configured)"


def test_mermaid_skips_edges_to_unknown_nodes() -> None:
    # loading refuses such a blueprint; one built directly (as lint's partial load does) can still have them
    blueprint = Blueprint("x", (NodeDefinition("a", "a"),), (EdgeDefinition("a", "ghost"),))
    assert mermaid(blueprint) == 'flowchart TD\n    n0["a"]'


# ---------------------------------------------------------------------------------------------- lint
BAD_BLUEPRINT: dict[str, Any] = {
    "id": "bad",
    "nodes": [
        {"id": "a", "uses": "fetch"},
        {"id": "a", "uses": "duplicate"},
        {"id": "b", "uses": "nothere", "config": {"joinStrategy": "most", "fallback": "zzz"}},
        {"id": "m", "uses": "map", "params": {}},
        {"id": "s", "uses": "subflow", "params": {"blueprintId": "nope"}},
        {"id": "x", "uses": "fetch"},
        {"id": "y", "uses": "fetch"},
        {"id": "after_cycle", "uses": "fetch"},
        {"id": "loop", "uses": "loop-controller", "params": {"condition": "iteration <"}},
        {"id": "self", "uses": "fetch", "config": {"fallback": "self"}},
    ],
    "edges": [
        {"source": "a", "target": "b", "condition": "result.output >"},
        {"source": "a", "target": "b", "transform": "__import__('os')"},
        {"source": "ghost", "target": "b"},
        {"source": "b", "target": "phantom"},
        {"source": "b", "target": "m"},
        {"source": "m", "target": "s"},
        {"source": "x", "target": "y"},
        {"source": "y", "target": "x"},
        {"source": "y", "target": "after_cycle"},
    ],
}


def codes(issues: list[Any]) -> list[str]:
    return sorted(issue.code for issue in issues)


def test_lint_blueprint_codes_without_app() -> None:
    issues = lint_blueprint(BAD_BLUEPRINT, known_blueprints=["bad", "other"])
    assert codes(issues) == sorted([
        "DUPLICATE_NODE_ID", "UNKNOWN_JOIN_STRATEGY", "INVALID_EDGE_SOURCE", "INVALID_EDGE_TARGET",
        "INVALID_EXPRESSION", "INVALID_EXPRESSION", "INVALID_EXPRESSION", "INVALID_FALLBACK", "INVALID_FALLBACK",
        "INVALID_MAP_WORKER", "INVALID_SUBFLOW_BLUEPRINT_ID", "CYCLE_WITHOUT_ENTRY", "ORPHAN_NODE",
    ])
    orphan = next(issue for issue in issues if issue.code == "ORPHAN_NODE")
    assert (orphan.node_id, orphan.blueprint_id) == ("after_cycle", "bad")


def test_lint_blueprint_with_app_checks_implementations() -> None:
    flow = Flow("ok")
    flow.node("fetch", lambda ctx: [1, 2])
    flow.map("each", "double")
    flow.subflow("child", "ok")
    flow.edge("fetch", "each").edge("each", "child")
    app = App(flows=[flow], registry={"known": lambda ctx: None})
    issues = lint_blueprint(flow.to_blueprint(), app)
    assert [(i.code, i.node_id) for i in issues] == [("INVALID_MAP_WORKER", "each"),  # "double" is not registered
                                                     ("SUBFLOW_RECURSION", "child")]  # "ok" runs itself
    declarative = {"id": "d", "nodes": [{"id": "k", "uses": "known"}, {"id": "u", "uses": "unknown"},
                                        {"id": "w", "uses": "wait"}, {"id": "s", "uses": "subflow",
                                                                      "params": {"blueprintId": "ok"}}],
                   "edges": [{"source": "k", "target": "u"}, {"source": "u", "target": "w"},
                             {"source": "w", "target": "s"}]}
    issues = lint_blueprint(declarative, app)
    assert [(i.code, i.node_id) for i in issues] == [("MISSING_NODE_IMPLEMENTATION", "u")]


def test_lint_blueprint_clean_flow_and_entry_points() -> None:
    flow = Flow("loop")
    flow.node("start", lambda ctx: 0)
    flow.node("step", lambda ctx: ctx.input)
    flow.loop("again", start="step", end="step", condition="iteration < 3")
    flow.edge("start", "step")
    assert lint_blueprint(flow.to_blueprint(), App(flows=[flow])) == []
    cycle = {"id": "c", "nodes": [{"id": "x", "uses": "x"}, {"id": "y", "uses": "y"}],
             "edges": [{"source": "x", "target": "y"}, {"source": "y", "target": "x"}],
             "metadata": {"cycleEntryPoints": ["x"]}}
    assert lint_blueprint(cycle) == []


def test_lint_unloadable_blueprint() -> None:
    issues = lint_blueprint({"id": "x", "nodes": "nope"})
    assert [(i.code, i.message) for i in issues] == [
        ("INVALID_BLUEPRINT", "nodes: must be a list of node objects, got 'nope'")]


def test_lint_command_on_files(project: Path) -> None:
    bad = project / "bad.json"
    bad.write_text(json.dumps(BAD_BLUEPRINT), encoding="utf-8")
    good = project / "good.json"
    good.write_text(json.dumps({"id": "nope", "nodes": [{"id": "n", "uses": "n"}]}), encoding="utf-8")
    result = CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["lint", str(bad), str(good)])
    assert result.exit_code == 1
    found = {line.split()[1] for line in lines(result)[:-1]}
    assert "DUPLICATE_NODE_ID" in found and "CYCLE_WITHOUT_ENTRY" in found
    assert "INVALID_SUBFLOW_BLUEPRINT_ID" not in found  # "nope" is the id of the other file
    assert lines(result)[-1] == "12 issues in 2 blueprints"
    assert lines(result)[0].startswith(f"{bad}: ")

    clean = invoke("lint", str(good))
    assert (clean.exit_code, lines(clean)) == (0, ["no issues in 1 blueprint"])


def test_lint_command_finds_subflow_recursion_across_files(project: Path) -> None:
    for name, child in (("ping", "pong"), ("pong", "ping")):
        blueprint = {"id": name, "nodes": [{"id": "call", "uses": "subflow", "params": {"blueprintId": child}}]}
        (project / f"{name}.json").write_text(json.dumps(blueprint), encoding="utf-8")
    result = CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["lint", str(project / "ping.json"),
                                                             str(project / "pong.json")])
    assert result.exit_code == 1
    assert [line.split()[1] for line in lines(result)[:-1]] == ["SUBFLOW_RECURSION", "SUBFLOW_RECURSION"]


def test_lint_command_on_the_app(project: Path) -> None:
    result = invoke("lint", "--app", f"{APP_MODULE}:app")
    assert (result.exit_code, lines(result)) == (0, ["no issues in 3 blueprints"])
    assert invoke("lint").exit_code == 1  # neither files nor an app


def test_lint_command_on_invalid_json(project: Path) -> None:
    path = project / "broken.json"
    path.write_text("{", encoding="utf-8")
    result = invoke("lint", str(path))
    assert result.exit_code == 1
    assert lines(result)[0].startswith(f"error: {path} is not valid JSON")


# ---------------------------------------------------------------------------------------------- examples, demo
@pytest.mark.parametrize("name", ["quickstart", "declarative"])
def test_examples_run_and_lint_clean(name: str, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py")], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.splitlines()[0] == "completed"
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    try:
        result = invoke("lint", "--app", f"{name}:app")
    finally:
        sys.modules.pop(name, None)
    assert (result.exit_code, lines(result)) == (0, ["no issues in 1 blueprint"])


def test_demo_end_to_end(tmp_path: Path) -> None:
    """`flowcraft demo` as a user runs it: SQLite, two worker processes, stopped at the end."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flowcraft.cli", "demo"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert result["output"]["decision"] == "approved"
    assert result["outputs"]["pricing"]["attempt"] == 2  # failed once, then retried
    assert set(result["outputs"]["combine"]) >= {"total", "in_stock", "days"}  # the all-join saw all three
    assert "review" not in result["outputs"]  # the untaken conditional branch
    assert "with 2 worker processes" in done.stderr
    assert "skipped (untaken branch): review" in done.stderr
    assert list(tmp_path.iterdir()) == []  # a temporary database, nothing left behind
    pids = [int(pid) for pid in done.stderr.split("started workers (pids ")[1].split(")")[0].split(", ")]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert time.monotonic() - started < 60
