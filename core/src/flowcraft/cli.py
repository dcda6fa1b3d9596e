"""The ``flowcraft`` command.

Errors are one red line ``error: <message>`` plus a hint line, exit code 1 (2 for usage errors); the
traceback only with ``--debug``. Machine-readable output (result JSON, run ids, Mermaid) goes to stdout,
everything meant for people (progress, notes, errors) to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flowcraft.app import App, load_app
from flowcraft.client import SETTLED_STATUSES, Client
from flowcraft.config import MASK, Config, load_config, mask_option, redact_text, run_event_loop
from flowcraft.engine.core import Engine, EngineOptions, RunResult
from flowcraft.engine.supervisor import Supervisor
from flowcraft.engine.worker import Worker
from flowcraft.errors import ConfigError, FlowcraftError, InvalidStateError, WaitTimeoutError
from flowcraft.health import (
    FleetHealth,
    HealthServer,
    HealthState,
    check_ready_file,
    remove_ready_file,
    write_ready_file,
)
from flowcraft.model import Blueprint
from flowcraft.operate import (
    LOG_FORMATS,
    age_seconds,
    configure_logging,
    format_line,
    history,
    tag_worker,
    timeline_table,
    worker_summary,
)
from flowcraft.options import describe_options, schema_of, secret_names
from flowcraft.plugins import DISABLE_ENV, KINDS, NODE_KIND, PRESET, registry
from flowcraft.presence import WorkerPresence, presence_interval
from flowcraft.spi import Component, RunRecord, WorkerInfo

T = TypeVar("T")
Describe = Callable[[str, Any], str]


@dataclass(slots=True)
class State:
    """What the global options decide, shared by every command."""

    debug: bool = False
    config_path: str | None = None

    @property
    def out(self) -> Console:
        return Console(soft_wrap=True)

    @property
    def err(self) -> Console:
        return Console(stderr=True, soft_wrap=True)

    def config(self, *, backend: str | None = None, app: str | None = None, options: Sequence[str] = (),
               lease_seconds: float | None = None) -> Config:
        overrides: dict[str, Any] = {}
        if lease_seconds is not None:
            overrides["lease_seconds"] = lease_seconds
        if backend:
            overrides["backend"] = backend
        if app:
            overrides["app"] = app
        if options:
            overrides["options"] = dict(_key_value(item) for item in options)
        return load_config(overrides, path=self.config_path, source="command line")


class FlowcraftGroup(click.Group):
    """Turns every exception of a command into the one-line error format."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                Console(stderr=True).print_exception(show_locals=False)
            _print_error(exc, debug=bool(ctx.params.get("debug")))
            ctx.exit(1)


def _print_error(exc: BaseException, *, debug: bool) -> None:
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    if isinstance(exc, FlowcraftError):
        message = str(exc.args[0]) if exc.args else type(exc).__name__
        hint = exc.hint
    else:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        hint = "" if debug else "this looks like a bug; run with --debug to see the traceback"
    err.print(f"[bold red]error: {escape(redact_text(' '.join(message.split())))}[/]")
    if hint:
        err.print(f"[dim]hint: {escape(redact_text(hint))}[/]")


@click.group(cls=FlowcraftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--config", "config_path", metavar="PATH", help="Config file (default: ./flowcraft.toml).")
@click.version_option(package_name="flowcraft-core", prog_name="flowcraft")
@click.pass_context
def cli(ctx: click.Context, debug: bool, config_path: str | None) -> None:
    """Flowcraft: workflows that run in one process or across a fleet of workers."""
    import logging

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = State(debug, config_path)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="flowcraft")


# ---------------------------------------------------------------------------------------------- options
def backend_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
                        help="Backend option, overrides the config (repeatable).")(func)
    return click.option("--backend", "-b", metavar="NAME",
                        help="Backend preset (default: from config, else sqlite).")(func)


def app_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--app", "-a", metavar="MODULE:ATTR",
                        help="The App with the blueprints (default: `app` in config).")(func)


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        # the value is not echoed: without 'KEY=' it may well be a bare secret (a URL with a password)
        raise click.BadParameter("expected KEY=VALUE, got a value without a 'KEY=' (not shown, it may hold a "
                                 "secret); write e.g. -o redis_url=redis://host:6379/0", param_hint="--option")
    return key.strip(), value


def _json_option(text: str | None, name: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None


def _load_app(config: Config, *, required: bool, why: str = "") -> App | None:
    if config.app is None:
        if required:
            raise ConfigError(f"{why} needs the app with the blueprints",
                              hint="pass --app package.module:app or set `app = \"package.module:app\"` in "
                                   "flowcraft.toml")
        return None
    # like `python -m`, the working directory is importable, so `--app workflows:app` finds ./workflows.py
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return load_app(config.app)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _result_data(result: RunResult) -> dict[str, Any]:
    return {"run_id": result.run_id, "blueprint_id": result.blueprint_id, "status": result.status,
            "output": result.output, "outputs": result.outputs, "errors": result.errors,
            "awaiting": result.awaiting}


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


@contextlib.asynccontextmanager
async def _client(config: Config, app: App | None = None, *, read_only: bool = False) -> AsyncIterator[Client]:
    """A client on the configured backend; ``read_only`` for commands that only read (no database is created)."""
    client = Client(config.build_backend(read_only=read_only), app)
    try:
        yield client
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------------- backends, config
@cli.command()
@click.option("--options", "options_of", metavar="NAME",
              help="Show the options of backend NAME's components instead: type, default and help.")
@click.pass_obj
def backends(state: State, options_of: str | None) -> None:
    """List installed backends (presets), components and node kinds, with the distribution providing each, and the
    plugins left out (disabled, broken, raising or clashing) with the reason."""
    config = state.config()
    reg = registry(config.plugins_disable)
    if options_of is not None:
        _print_options(state, options_of, reg.classes(options_of))
        return
    presets = Table(title="Backends", box=box.SIMPLE_HEAD, title_justify="left")
    presets.add_column("name", no_wrap=True)
    presets.add_column("components and description", overflow="fold")
    for name, preset in sorted(reg.presets().items()):
        parts = ", ".join(f"{kind} {component}" for kind, component in preset.components().items())
        provider = reg.provider(PRESET, name).provider()
        details = f"{escape(preset.description)}\n[dim]{escape(parts)}; provided by {escape(provider)}[/]"
        presets.add_row(f"[bold]{escape(name)}[/]" + (" [green](selected)[/]" if name == config.backend else ""),
                        details)
    components = Table(title="Components", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("kind", "name", "provided by"):
        components.add_column(column)
    for kind in KINDS:
        for name in reg.names(kind):
            components.add_row(kind, escape(name), escape(reg.provider(kind, name).provider()))
    for uses in sorted(reg.node_kinds()):
        components.add_row(NODE_KIND, escape(uses), escape(reg.provider(NODE_KIND, uses).provider()))
    out = state.out
    out.print(presets)
    out.print(components)
    if reg.left_out or reg.unmatched_disabled:
        out.print("[bold]Plugins left out[/]")
    for left in reg.left_out:
        out.print(f"  [{'yellow' if left.disabled else 'red'}]{escape(left.line())}[/]")
    for name in reg.unmatched_disabled:
        unmatched = f"{name!r} ({reg.disabled[name]}) names no installed plugin; built-ins cannot be disabled"
        out.print(f"  [yellow]{escape(unmatched)}[/]")
    how = (f'select with --backend NAME, FLOWCRAFT_BACKEND or `backend = "NAME"` in flowcraft.toml; disable a '
           f'plugin (by plugin or distribution name) with `[plugins] disable = ["NAME"]` or {DISABLE_ENV}=NAME')
    out.print(f"[dim]{escape(how)}[/]")


def _print_options(state: State, backend: str, components: dict[str, type[Component]]) -> None:
    table = Table(title=f"Options of backend {backend!r}", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("option", "type", "default", "used by"):
        table.add_column(column, no_wrap=column != "used by")
    table.add_column("help", overflow="fold")
    for info in describe_options(components):
        default = "-" if info.default is None else MASK if info.secret else str(info.default)
        users = "all" if len(info.components) == len(components) else ", ".join(info.components)
        table.add_row(f"[bold]{escape(info.name)}[/]", info.type, escape(default), escape(users), escape(info.help))
    out = state.out
    out.print(table)
    unchecked = [f"{kind} {component.name!r}" for kind, component in components.items() if schema_of(component) is None]
    if unchecked:
        out.print(f"[yellow]{escape(', '.join(unchecked))} declare no options: keys not listed here are passed to "
                  "them unchecked[/]")
    how = ("set with -o KEY=VALUE, FLOWCRAFT_OPT_KEY=VALUE or `KEY = VALUE` under [options] in flowcraft.toml; "
           "`flowcraft config` shows the values in effect")
    out.print(f"[dim]{escape(how)}[/]")


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved config as JSON.")
@app_option
@backend_options
@click.pass_obj
def show_config(state: State, as_json: bool, app: str | None, backend: str | None, options: Sequence[str]) -> None:
    """Show the resolved configuration (secrets masked) and where each value came from: every option of the
    backend's components with the value it takes, defaults included (the sqlite path made absolute)."""
    config = state.config(backend=backend, app=app, options=options)
    # an uninstalled backend or component is an error here too, not a table that looks fine
    secrets = secret_names(registry(config.plugins_disable).classes(config.backend, config.components))
    problem: ConfigError | None = None
    try:
        resolved = config.resolved_options()
    except ConfigError as exc:  # shown below the table: this command is where one looks for such mistakes
        resolved, problem = dict(config.options), exc
    shown = {key: MASK if key in secrets and value is not None else value for key, value in resolved.items()}
    if as_json:
        masked = {key: mask_option(key, value) for key, value in sorted(shown.items())}
        click.echo(_dumps({**config.redacted(), "resolved_options": masked}))
    else:
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("key")
        table.add_column("value", overflow="fold")
        table.add_column("source", overflow="fold")
        for key, value, source in config.entries(shown):
            table.add_row(key, escape(str(value)), escape(source))
        state.out.print(table)
        files = ", ".join(str(path) for path in config.files) or "none"
        state.out.print(f"[dim]files read: {escape(files)}[/]")
    if problem is not None:
        state.err.print(f"[bold yellow]warning: {escape(redact_text(str(problem.args[0])))}[/]")
        state.err.print(f"[dim]hint: {escape(problem.hint)}[/]")


# ---------------------------------------------------------------------------------------------- worker
@cli.command()
@app_option
@backend_options
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=16, show_default=True,
              help="Jobs handled at once per process.")
@click.option("--backlog", type=click.IntRange(min=0), metavar="N",
              help="Jobs a commit may hand to this process beyond its free slots, waiting (at most a second) for "
                   "a slot instead of going through the queue, so a fan-out stays with the worker that fired it "
                   "(default: 4 per --concurrency slot; 0: only free slots).")
@click.option("--processes", "-p", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes to start (each with --concurrency); a process that dies is restarted.")
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Seconds a job stays owned without a heartbeat; a killed worker's jobs come back after it "
                   "(default: lease_seconds from config, else 30).")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="S",
              help="On SIGTERM/Ctrl+C, seconds in-flight jobs get to finish before they are given back to the "
                   "queue and the worker exits.")
@click.option("--health-port", type=click.IntRange(min=0, max=65535), metavar="PORT",
              help="Serve HTTP /healthz (event loop alive) and /readyz (connected and consuming) on this port, for "
                   "supervisors and Kubernetes probes (0: a free port, printed when ready).")
@click.option("--health-host", default="0.0.0.0", show_default=True, metavar="HOST",
              help="Address the health endpoints listen on (all interfaces by default, as probes come from "
                   "outside the pod).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Write this file once the worker is connected and consuming; removed when it stops.")
@click.option("--ready-dir", type=click.Path(file_okay=False, path_type=Path), hidden=True,
              help="Write DIR/<pid> once ready (what a --processes supervisor gives its worker processes).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="Log lines on stderr: text, or one JSON object per line with run_id, node_id, attempt, event "
                   "and worker_id as fields. Failures, retries, dead letters are logged at INFO.")
@click.pass_obj
def worker(state: State, app: str | None, backend: str | None, options: Sequence[str], concurrency: int,
           backlog: int | None, processes: int, lease_seconds: float | None, shutdown_timeout: float,
           health_port: int | None, ready_dir: Path | None, health_host: str, ready_file: Path | None,
           log_format: str) -> None:
    """Run a worker: handle jobs of the app's blueprints until SIGTERM/Ctrl+C (in-flight jobs finish within
    --shutdown-timeout or are given back to the queue). With --processes, a supervisor restarts a worker
    process that dies (with backoff) and gives up only on a crash loop."""
    config = state.config(backend=backend, app=app, options=options, lease_seconds=lease_seconds)
    queue = config.components.get("queue") or registry(config.plugins_disable).preset(config.backend).queue
    if queue == "memory":
        raise ConfigError("the memory backend lives inside one process, so a separate worker cannot serve it",
                          hint="use --backend sqlite (or another shared backend), or `flowcraft run --wait`")
    loaded = _load_app(config, required=True, why="a worker")
    assert loaded is not None  # required=True raised otherwise
    configure_logging(log_format, debug=state.debug)
    if ready_file is not None:
        check_ready_file(ready_file)
    if ready_dir is not None:  # a process of a --processes fleet: its supervisor reports the fleet's readiness
        ready_file = ready_dir / str(os.getpid())
    if processes > 1:
        # children resolve the same config themselves, so no secret lands on their command lines
        args = [*_global_args(state), "worker", "--concurrency", str(concurrency),
                f"--shutdown-timeout={shutdown_timeout!r}"]
        args += [f"--lease-seconds={lease_seconds!r}"] if lease_seconds is not None else []
        args += [f"--backlog={backlog}"] if backlog is not None else []
        args += [f"--app={app}"] if app else []
        args += [f"--backend={backend}"] if backend else []
        args += [f"--option={item}" for item in options]
        args += [f"--log-format={log_format}"]
        reporting = health_port is not None or ready_file is not None
        fleet = FleetHealth(processes, health_host, health_port, ready_file) if reporting else None
        supervisor = Supervisor([sys.executable, "-m", "flowcraft.cli", *args, *(fleet.child_args() if fleet else [])],
                                processes, log=lambda line: state.err.print(escape(line), highlight=False),
                                stop_timeout=shutdown_timeout + 15.0)
        if fleet is not None:
            supervisor.tick = lambda: _fleet_tick(state, fleet, supervisor, health_host)
            fleet.start()
        try:
            supervisor.run()
        finally:
            if fleet is not None:
                fleet.close()
        state.err.print(f"all worker processes stopped ({supervisor.restarts} restarts)")
        return
    health = HealthHooks(health_port, health_host, ready_file)
    # uvloop when installed, unless the config says event_loop = "asyncio"
    run_event_loop(_work(state, config, loaded, concurrency, shutdown_timeout, health, backlog=backlog),
                   config.event_loop)


def _fleet_tick(state: State, fleet: FleetHealth, supervisor: Supervisor, host: str) -> None:
    if fleet.tick(supervisor.pids, supervisor.stopping):
        where = f", health on http://{host}:{fleet.server.port}" if fleet.server is not None else ""
        state.err.print(f"all {fleet.count} worker processes ready{escape(where)}")


def _global_args(state: State) -> list[str]:
    args = ["--debug"] if state.debug else []
    return args + ([f"--config={state.config_path}"] if state.config_path else [])


@dataclass(slots=True)
class HealthHooks:
    """``flowcraft worker --health-port/--health-host/--ready-file`` (``flowcraft.health``)."""

    port: int | None = None
    host: str = "0.0.0.0"
    ready_file: Path | None = None


async def _work(state: State, config: Config, app: App, concurrency: int, shutdown_timeout: float,
                hooks: HealthHooks | None = None, *, backlog: int | None = None) -> None:
    hooks = hooks or HealthHooks()
    backend = config.build_backend()
    engine = Engine(app, backend, options=EngineOptions(lease_seconds=config.lease_seconds))
    tag_worker(engine.worker_id)
    presence = WorkerPresence(backend, app, worker_id=engine.worker_id, concurrency=concurrency,
                              interval=presence_interval(config.lease_seconds), backend_name=config.backend)
    runner = Worker(engine, concurrency=concurrency, grace=shutdown_timeout, presence=presence, backlog=backlog)
    _on_stop_signals(runner.stop)
    health = HealthState(engine.worker_id)
    try:
        server = HealthServer(health, hooks.host, hooks.port) if hooks.port is not None else None
    except ConfigError:
        await backend.close()
        raise
    blueprints = ", ".join(sorted(app.blueprints)) or "none"

    async def announce() -> None:
        # "ready" only once the worker reached its stores and its first receive returned (Worker.ready)
        await runner.ready.wait()
        if hooks.ready_file is not None:  # before the port says ready, so the two never disagree
            write_ready_file(hooks.ready_file, {"worker_id": engine.worker_id, "pid": os.getpid(),
                                                "ready_at": time.time()})
        health.update(runner.state, runner.in_flight, runner.handled, runner.failed)
        where = f", health on http://{hooks.host}:{server.port}" if server is not None else ""
        state.err.print(f"worker {engine.worker_id} (pid {os.getpid()}) ready on backend {escape(backend.name)}, "
                        f"concurrency {concurrency}, backlog {runner.backlog}, lease {config.lease_seconds:g}s, "
                        f"blueprints: {escape(blueprints)}{escape(where)}; Ctrl+C to stop")

    async def refresh() -> None:
        while True:
            health.update(runner.state, runner.in_flight, runner.handled, runner.failed)
            await asyncio.sleep(1.0)

    helpers = [asyncio.create_task(announce()), asyncio.create_task(refresh())]
    if server is not None:
        server.start()
    try:
        await runner.run()
    finally:
        for task in helpers:
            task.cancel()
        if server is not None:
            server.stop()
        if hooks.ready_file is not None:
            remove_ready_file(hooks.ready_file)
        await backend.close()
    state.err.print(f"worker {engine.worker_id} stopped: "
                    f"{worker_summary(runner.handled, engine.counts, runner.failed)}")


def _on_stop_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
        except NotImplementedError:  # Windows event loops
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop))


class WorkerProcesses:
    """Local worker processes running ``flowcraft <args>``; stopped by PID with SIGTERM (then SIGKILL)."""

    def __init__(self, args: Sequence[str], count: int, *, env: dict[str, str] | None = None,
                 cwd: str | None = None, log: Path | None = None) -> None:
        self.command = [sys.executable, "-m", "flowcraft.cli", *args]
        self.count = count
        self.env = env
        self.cwd = cwd
        self.log = log
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> list[int]:
        output = self.log.open("ab") if self.log is not None else None
        try:
            for _ in range(self.count):
                self.processes.append(subprocess.Popen(self.command, env=self.env, cwd=self.cwd,
                                                       stdin=subprocess.DEVNULL, stdout=output, stderr=output))
        finally:
            if output is not None:
                output.close()  # each child holds its own descriptor
        return [process.pid for process in self.processes]

    def wait_ready(self, marker: str, timeout: float) -> None:
        """Wait until every process has logged ``marker`` (or one has exited, or the time is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.failed() is None and self.log is not None:
            if self.log.exists() and self.log.read_text(errors="replace").count(marker) >= self.count:
                return
            time.sleep(0.05)

    def failed(self) -> subprocess.Popen[bytes] | None:
        """A process that exited on its own (None while all run)."""
        return next((p for p in self.processes if p.poll() is not None), None)

    def send(self, sig: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        self.send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


#: jobs in flight of the worker `flowcraft run --inline` runs in its own process
INLINE_CONCURRENCY = 16

# ---------------------------------------------------------------------------------------------- runs
@cli.command()
@click.argument("blueprint")
@click.option("--input", "-i", "input_json", metavar="JSON", help="The run's input as JSON.")
@click.option("--wait", "-w", is_flag=True, help="Show progress and print the result when the run settles.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up waiting after this many seconds.")
@click.option("--run-id", help="Use this run id instead of a generated one.")
@click.option("--inline/--no-inline", default=None,
              help="Also run a worker in this process, announced in `flowcraft workers` while it runs (implies --wait; "
                   "default: only for the memory backend).")
@app_option
@backend_options
@click.pass_obj
def run(state: State, blueprint: str, input_json: str | None, wait: bool, timeout: float | None,
        run_id: str | None, inline: bool | None, app: str | None, backend: str | None,
        options: Sequence[str]) -> None:
    """Start a run of BLUEPRINT; print its run id, or with --wait its result as JSON.

    Without an app (--app or `app` in config), BLUEPRINT is one a live worker published: workers publish the
    blueprints they load, so only the backend needs configuring; a blueprint no live worker loads is refused."""
    run_input = _json_option(input_json, "--input")
    config = state.config(backend=backend, app=app, options=options)
    loaded = _load_app(config, required=False)
    if loaded is not None and loaded.blueprint(blueprint) is None and config.app is not None and app:
        known = ", ".join(sorted(loaded.blueprints)) or "none"
        raise ConfigError(f"the app has no blueprint {blueprint!r}", hint=f"known blueprints: {known}")

    async def main() -> RunResult | str:
        async with _client(config, loaded) as client:
            in_process = inline if inline is not None else getattr(client.backend.queue, "name", "") == "memory"
            runner: Worker | None = None
            if in_process:
                if loaded is None or loaded.blueprint(blueprint) is None:
                    raise ConfigError(f"running {blueprint!r} in this process needs the app with its implementations",
                                      hint="pass --app package.module:app, or start a worker and leave out --inline")
                # announced like any worker: it takes jobs from the backend's queue while it runs, and a worker
                # that does not load this blueprint bounces its jobs on, not to a dead letter, while this one is live
                presence = WorkerPresence(client.backend, loaded, worker_id=client.engine.worker_id,
                                          concurrency=INLINE_CONCURRENCY,
                                          interval=presence_interval(config.lease_seconds),
                                          backend_name=config.backend)
                runner = Worker(client.engine, concurrency=INLINE_CONCURRENCY, poll_wait=0.2, grace=2.0,
                                presence=presence)
            task = asyncio.create_task(runner.run()) if runner is not None else None
            try:
                # the worker in this process runs it: other live workers need not load this blueprint
                starting = client.engine.runs.start if runner is not None else client.start
                started = await starting(blueprint, run_input, run_id=run_id)
                if not (wait or in_process):
                    return started
                definition = await client.blueprint(blueprint)
                assert definition is not None  # start succeeded, so the client has it
                return await watch(client, started, definition, state.err, timeout=timeout)
            finally:
                if runner is not None and task is not None:
                    runner.stop()
                    await task

    outcome = _run(main())
    if isinstance(outcome, str):
        click.echo(outcome)
        state.err.print(f"[dim]started run {outcome}; follow it with `flowcraft status {outcome}` "
                        "(a worker must be running)[/]")
        return
    _finish(state, outcome)


def _finish(state: State, result: RunResult) -> None:
    """Print the result JSON; a failed or cancelled run is an error (exit code 1)."""
    click.echo(_dumps(_result_data(result)))
    if result.status in ("failed", "cancelled"):
        reason = "; ".join(str(e.get("message", "")) for e in result.errors) or result.status
        raise InvalidStateError(f"run {result.run_id} {result.status}: {reason}",
                                hint=f"inspect it with `flowcraft status {result.run_id}`")
    if result.status == "awaiting":
        nodes = ", ".join(str(a.get("node_id")) for a in result.awaiting)
        state.err.print(f"[yellow]run {result.run_id} is waiting at {escape(nodes)}[/]; continue it with "
                        f"`flowcraft resume {result.run_id} --action ...`")


async def watch(client: Client, run_id: str, blueprint: Blueprint, console: Console, *,
                timeout: float | None = None, describe: Describe | None = None,
                check: Callable[[], None] | None = None) -> RunResult:
    """Show a progress bar of finished nodes until the run settles, and each node's completion, failed
    attempt (retried), skip and failure as it happens (from the run's timeline); ``check`` may raise to give up."""
    total = len(blueprint.nodes)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[str] = set()
    told: set[tuple[str, int, str, int]] = set()  # (node, visit, what, attempt) already printed
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("nodes"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"run {run_id[:12]}", total=total)
        while True:
            result = await client.status(run_id)
            for line in _progress_lines(result, told, describe):
                progress.console.print(line)
            seen |= {v.node_id for v in result.timeline if v.state in ("done", "skipped")}
            seen |= {node_id for node_id in result.outputs if node_id in {n.id for n in blueprint.nodes}}
            progress.update(task, completed=min(len(seen), total))
            if result.status in SETTLED_STATUSES:
                if result.status == "completed":
                    progress.update(task, completed=total)  # untaken branches never write an output
                return result
            if check is not None:
                check()
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"run {run_id} did not settle within {timeout:g}s (status {result.status})",
                                       hint=f"it goes on; check later with `flowcraft status {run_id}`")
            await client.backend.status.wait_for_change(run_id, 0.25)


def _progress_lines(result: RunResult, told: set[tuple[str, int, str, int]],
                    describe: Describe | None) -> list[str]:
    """What ``watch`` prints for the timeline entries it has not printed yet."""
    lines: list[str] = []
    for visit in result.timeline:
        name = escape(visit.node_id if not visit.visit else f"{visit.node_id} (visit {visit.visit})")
        for attempt in visit.attempts:
            key = (visit.node_id, visit.visit, "error", attempt.attempt)
            if attempt.error and key not in told and not (visit.state == "failed" and attempt is visit.attempts[-1]):
                told.add(key)
                after = f"fallback {visit.fallback}" if visit.fallback and attempt is visit.attempts[-1] else "retrying"
                lines.append(f"  [yellow]↻[/] {name}  attempt {attempt.attempt} failed: "
                             f"{escape(attempt.error)} [dim]({after})[/]")
        key = (visit.node_id, visit.visit, visit.state, 0)
        if key in told or visit.state not in ("done", "skipped", "failed"):
            continue
        told.add(key)
        if visit.state == "done":
            output = result.outputs.get(visit.node_id)
            detail = describe(visit.node_id, output) if describe is not None else ""
            retries = f" after {len(visit.attempts)} attempts" if visit.retries else ""
            lines.append(f"  [green]✓[/] {name}{retries}" + (f"  [dim]{escape(detail)}[/]" if detail else ""))
        elif visit.state == "skipped":
            lines.append(f"  [dim]↷ {name} skipped[/]")
        else:
            lines.append(f"  [red]✗[/] {name} failed: {escape(visit.error or '')}")
    return lines


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (with its timeline).")
@backend_options
@click.pass_obj
def status(state: State, run_id: str, as_json: bool, backend: str | None, options: Sequence[str]) -> None:
    """Show a run: status, errors, what it waits for, node outputs, and its timeline: per node and visit its
    state, attempts, worker, start, duration and error."""
    config = state.config(backend=backend, options=options)

    async def main() -> tuple[RunResult, RunRecord]:
        async with _client(config, read_only=True) as client:
            result = await client.status(run_id)  # raises when there is no such run
            record = await client.backend.status.get(run_id)
            assert record is not None
            return result, record

    result, record = _run(main())
    if as_json:
        click.echo(_dumps({**_result_data(result), "created_at": record.created_at,
                           "updated_at": record.updated_at, "version": record.version,
                           "timeline": [visit.to_dict() for visit in result.timeline],
                           "dead_letters": result.dead_letters}))
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("run", result.run_id)
    table.add_row("blueprint", f"{escape(result.blueprint_id)} (version {escape(str(record.version))})")
    table.add_row("status", _status_text(result.status))
    table.add_row("created", _when(record.created_at))
    table.add_row("updated", _when(record.updated_at))
    for entry in result.awaiting:
        table.add_row("waiting at", escape(str(entry.get("node_id"))))
    for error in result.errors:
        table.add_row("error", escape(f"{error.get('node_id') or 'run'}: {error.get('message')}"))
    for letter in result.dead_letters:  # replay with `flowcraft dead-letters --replay ID`
        table.add_row("dead letter", escape(f"{letter.get('node_id')}: {letter.get('reason')}"))
    for node_id, output in sorted(result.outputs.items()):
        table.add_row(f"  {escape(node_id)}", escape(json.dumps(output, default=str, ensure_ascii=False)))
    state.out.print(table)
    if result.timeline:
        state.out.print(timeline_table(result.timeline))


def _status_text(value: str) -> str:
    color = {"completed": "green", "failed": "red", "cancelled": "red", "awaiting": "yellow"}.get(value, "cyan")
    return f"[{color}]{value}[/]"


@cli.command()
@click.option("--status", "status_filter", type=click.Choice(["running", "awaiting", "completed", "failed",
                                                              "cancelled"]), help="Only runs with this status.")
@click.option("--blueprint", help="Only runs of this blueprint.")
@click.option("--since", "since_text", metavar="AGE", help="Only runs created within AGE (30s, 15m, 2h, 7d).")
@click.option("--older-than", "older_text", metavar="AGE", help="Only runs created more than AGE ago.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--cursor", help="Continue a previous listing.")
@backend_options
@click.pass_obj
def runs(state: State, status_filter: str | None, blueprint: str | None, since_text: str | None,
         older_text: str | None, limit: int, cursor: str | None, backend: str | None, options: Sequence[str]) -> None:
    """List runs, newest first; filter by status, blueprint and age."""
    config = state.config(backend=backend, options=options)
    since = age_seconds(since_text, "--since")
    older_than = age_seconds(older_text, "--older-than")

    async def main() -> tuple[list[RunRecord], str | None]:
        async with _client(config, read_only=True) as client:
            now = time.time()
            return await client.runs(status_filter, blueprint, limit, cursor,
                                     created_after=None if since is None else now - since,
                                     created_before=None if older_than is None else now - older_than)

    records, next_cursor = _run(main())
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("run id", overflow="fold")
    table.add_column("blueprint", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for record in records:
        table.add_row(record.run_id, escape(record.blueprint_id), _status_text(record.status), _when(record.created_at))
    state.out.print(table if records else "[dim]no runs[/]")
    if next_cursor:
        state.out.print(f"[dim]more: --cursor {escape(next_cursor)}[/]")


@cli.command()
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run completes, fails or "
                                                   "is cancelled.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@backend_options
@click.pass_obj
def logs(state: State, run_id: str, follow: bool, as_json: bool, backend: str | None, options: Sequence[str]) -> None:
    """Print a run's history: each attempt started, finished or failed (worker, duration, error), retries,
    skips, waits and the final status, oldest first."""
    config = state.config(backend=backend, options=options)

    async def main() -> None:
        printed: set[tuple[Any, ...]] = set()
        async with _client(config, read_only=True) as client:
            while True:
                result = await client.status(run_id)  # raises when there is no such run
                for line in history(result):
                    if line.key() not in printed:
                        printed.add(line.key())
                        click.echo(json.dumps(line.to_dict(), default=str, ensure_ascii=False) if as_json
                                   else format_line(line))
                if not follow or result.status in ("completed", "failed", "cancelled"):
                    return
                await client.backend.status.wait_for_change(run_id, 0.5)

    _run(main())


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (localhost by default).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8787, show_default=True)
@click.option("--token", envvar="FLOWCRAFT_DASHBOARD_TOKEN", metavar="TOKEN",
              help="Enable actions (start, resume, cancel, retry, replay) for whoever gives this token "
                   "(env FLOWCRAFT_DASHBOARD_TOKEN); without it the dashboard is read-only.")
@click.option("--refresh", type=click.FloatRange(min=0.2), default=2.0, show_default=True, metavar="S",
              help="Seconds between refreshes of the runs list and a running run.")
@app_option
@backend_options
@click.pass_obj
def dashboard(state: State, host: str, port: int, token: str | None, refresh: float, app: str | None,
              backend: str | None, options: Sequence[str]) -> None:
    """Serve the web dashboard: runs (filters, live refresh), each run's graph, timeline, outputs and errors,
    blueprints and dead letters; with --token also start, resume, cancel, retry from a node and replay
    (needs `pip install "flowcraft-core[dashboard]"`)."""
    config = state.config(backend=backend, app=app, options=options)
    loaded = _load_app(config, required=False)
    from flowcraft.dashboard import serve

    mode = "actions need the token" if token else "read-only (pass --token to enable actions)"
    state.err.print(f"dashboard on http://{host}:{port} ({config.backend} backend, {mode})", highlight=False)
    serve(lambda: Client(config.build_backend(), loaded), host=host, port=port, token=token, refresh=refresh)


@cli.command()
@click.argument("run_id")
@click.option("--action", help="The action the waiting node returns (selects its edges).")
@click.option("--output", "output_json", metavar="JSON", help="The waiting node's output as JSON.")
@click.option("--node", help="Which waiting node, when several wait.")
@app_option
@backend_options
@click.pass_obj
def resume(state: State, run_id: str, action: str | None, output_json: str | None, node: str | None,
           app: str | None, backend: str | None, options: Sequence[str]) -> None:
    """Resume a run waiting at a `wait` node (human in the loop). Without an app, the run's blueprint is the one
    live workers published."""
    output = _json_option(output_json, "--output")
    config = state.config(backend=backend, app=app, options=options)
    loaded = _load_app(config, required=False)  # without it, the blueprint live workers published

    async def main() -> None:
        async with _client(config, loaded) as client:
            await client.resume(run_id, action, output, node)

    _run(main())
    state.err.print(f"resumed run {run_id}" + (f" with action {escape(action)}" if action else ""))


@cli.command()
@click.argument("run_id")
@backend_options
@click.pass_obj
def cancel(state: State, run_id: str, backend: str | None, options: Sequence[str]) -> None:
    """Cancel a running or waiting run."""
    config = state.config(backend=backend, options=options)

    async def main() -> str | None:
        async with _client(config) as client:
            if await client.cancel(run_id):
                return None
            return (await client.status(run_id)).status

    final = _run(main())
    if final is not None:
        raise InvalidStateError(f"run {run_id} is already {final}; nothing to cancel")
    state.err.print(f"cancelled run {run_id}")


# ---------------------------------------------------------------------------------------------- operations
@cli.command()
@click.option("--once/--watch", default=True, help="One pass (default), or a pass every --interval seconds.")
@click.option("--threshold", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Seconds without activity after which a run counts as stalled.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds between passes with --watch.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="Log each action (job re-enqueued, finish job sent, run failed) at INFO on stderr with the run "
                   "and node ids: text, or one JSON object per line.")
@backend_options
@click.pass_obj
def reconcile(state: State, once: bool, threshold: float, interval: float, log_format: str, backend: str | None,
              options: Sequence[str]) -> None:
    """Re-enqueue the pending jobs of runs whose workers died; with the `retention` config setting, also delete
    finished runs older than it (as `flowcraft purge`)."""
    config = state.config(backend=backend, options=options)
    configure_logging(log_format, debug=state.debug)

    async def main() -> None:
        stop = asyncio.Event()
        if not once:
            _on_stop_signals(stop.set)
        async with _client(config) as client:
            while True:
                stats = await client.reconcile(threshold, retention=config.retention)
                fields = " ".join(f"{key}={value}" for key, value in stats.to_dict().items())
                click.echo(f"{datetime.now():%H:%M:%S} {fields}" if not once else fields)
                if once:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if stop.is_set():
                    return

    _run(main())


@cli.command()
@click.option("--all", "include_dead", is_flag=True,
              help="Also list workers whose heartbeat expired without them removing their entry (killed).")
@click.option("--json", "as_json", is_flag=True, help="Print the workers as JSON.")
@backend_options
@click.pass_obj
def workers(state: State, include_dead: bool, as_json: bool, backend: str | None, options: Sequence[str]) -> None:
    """List live workers from their heartbeats in the store: id, host, pid, backend, concurrency, jobs in flight,
    last heartbeat, state, coordination protocol and the blueprints each loads. A worker whose heartbeat expired
    (3 intervals) is dead and left out. State ``waiting``: the worker takes no jobs while a live worker of another
    coordination protocol is there (protocol ``unknown``: a worker from before protocol versions)."""
    config = state.config(backend=backend, options=options)

    async def main() -> list[WorkerInfo]:
        async with _client(config, read_only=True) as client:
            return await client.workers(include_dead=include_dead)

    found = _run(main())
    now = time.time()
    if as_json:
        click.echo(_dumps([{**info.to_dict(), "live": info.live(now)} for info in found]))
        return
    if not found:
        state.out.print("[dim]no live workers[/]")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("worker", "host", "pid", "backend", "concurrency", "in flight", "handled", "last heartbeat",
                   "state", "protocol", "blueprints"):
        table.add_column(column, overflow="fold", no_wrap=column in ("pid", "concurrency", "in flight"))
    for info in found:
        live = info.live(now)
        blueprints = ", ".join(f"{ref.get('id')}@{ref.get('version')}" for ref in info.blueprints) or "-"
        table.add_row(escape(info.worker_id), escape(info.host), str(info.pid), escape(info.backend),
                      str(info.concurrency), str(info.in_flight), str(info.handled),
                      f"{max(0.0, now - info.heartbeat_at):.1f}s ago",
                      info.state if live else "[red]dead[/]", escape(info.protocol or "unknown"), escape(blueprints))
    state.out.print(table)


@cli.command()
@backend_options
@click.pass_obj
def setup(state: State, backend: str | None, options: Sequence[str]) -> None:
    """Create the backend's queues, tables and containers (idempotent)."""
    config = state.config(backend=backend, options=options)
    built = config.build_backend()

    async def main() -> None:
        try:
            await built.setup()
        finally:
            await built.close()

    with state.err.status(f"setting up backend {config.backend}..."):
        _run(main())
    for kind in KINDS:
        component = getattr(built, kind)
        state.out.print(f"[green]✓[/] {kind}: {escape(type(component).name)} ({type(component).__name__}) ready")
    state.out.print(f"backend {escape(config.backend)} is set up")


# ---------------------------------------------------------------------------------------------- blueprints
@cli.command()
@click.argument("blueprint")
@click.option("--direction", type=click.Choice(["TD", "LR"]), default="TD", show_default=True)
@app_option
@click.pass_obj
def graph(state: State, blueprint: str, direction: str, app: str | None) -> None:
    """Print a blueprint (a JSON file, or an id in the app) as a Mermaid flowchart."""
    config = state.config(app=app)
    click.echo(mermaid(_blueprint_arg(blueprint, config), direction))


def _blueprint_arg(arg: str, config: Config) -> Blueprint:
    path = Path(arg)
    if path.is_file():
        return Blueprint.from_json(path.read_text(encoding="utf-8"))
    loaded = _load_app(config, required=False)
    found = loaded.blueprint(arg) if loaded is not None else None
    if found is None:
        where = f"a blueprint of app {config.app}" if config.app else "a blueprint id (no app configured)"
        raise ConfigError(f"{arg!r} is neither a file nor {where}",
                          hint="pass a blueprint JSON file, or --app package.module:app with that blueprint")
    return found


_SHAPES = {"wait": ("{{", "}}"), "sleep": ("([", "])"), "map": ("[[", "]]"), "subflow": ("[[", "]]"),
           "loop-controller": ("{", "}")}


def mermaid(blueprint: Blueprint, direction: str = "TD") -> str:
    """A Mermaid flowchart: one box per node (shape by built-in kind), edges labelled with their action and
    condition, dotted edges to fallbacks. Mermaid ids are generated, so any node id is safe."""
    ids = {node.id: f"n{index}" for index, node in enumerate(blueprint.nodes)}
    lines = [f"flowchart {direction}"]
    for node in blueprint.nodes:
        opening, closing = _SHAPES.get(node.uses, ("[", "]"))
        label = node.id if node.uses == node.id else f"{node.id}<br/><small>{node.uses}</small>"
        if node.config.join_strategy == "any":
            label += "<br/><small>join: any</small>"
        lines.append(f"    {ids[node.id]}{opening}\"{_mermaid_text(label)}\"{closing}")
    for edge in blueprint.edges:
        if edge.source not in ids or edge.target not in ids:
            continue  # `flowcraft lint` reports these
        parts = [part for part in (edge.action, edge.condition) if part]
        label = f"|\"{_mermaid_text(' / '.join(parts))}\"|" if parts else ""
        lines.append(f"    {ids[edge.source]} -->{label} {ids[edge.target]}")
    for node in blueprint.nodes:
        if node.config.fallback in ids:
            lines.append(f"    {ids[node.id]} -.->|fallback| {ids[node.config.fallback]}")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    # inside a quoted Mermaid label only '"' breaks the syntax; '<br/>' and '<small>' are kept as markup
    return text.replace('"', "#quot;")


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@app_option
@click.pass_obj
def lint(state: State, files: Sequence[str], app: str | None) -> None:
    """Check blueprint JSON files, or every blueprint of the app; exit code 1 when there are issues."""
    from flowcraft.lint import LintIssue, lint_blueprint

    config = state.config(app=app)
    loaded = _load_app(config, required=not files, why="linting without blueprint files")
    found: list[tuple[str, LintIssue]] = []
    if files:
        raw = {path: _read_json(path) for path in files}
        # the files' blueprints as data, so subflow targets and recursion across files are checked
        known = [data for data in raw.values() if isinstance(data, dict) and isinstance(data.get("id"), str)]
        for path, data in raw.items():
            found += [(path, issue) for issue in lint_blueprint(data, loaded, known_blueprints=known)]
        checked = len(files)
    else:
        assert loaded is not None
        for blueprint in loaded.blueprints.values():
            found += [(blueprint.id, issue) for issue in lint_blueprint(blueprint, loaded)]
        checked = len(loaded.blueprints)
    out = state.out
    for where, issue in found:
        out.print(f"{escape(where)}: [bold red]{issue.code}[/] {escape(issue.message)}", highlight=False)
    if found:
        out.print(f"{len(found)} issue{'s' if len(found) != 1 else ''} in {checked} blueprint"
                  f"{'s' if checked != 1 else ''}")
        raise click.exceptions.Exit(1)
    out.print(f"[green]no issues[/] in {checked} blueprint{'s' if checked != 1 else ''}")


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


# ---------------------------------------------------------------------------------------------- demo
@cli.command()
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Local worker processes to start.")
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite database to keep (default: a temporary one).")
@click.option("--input", "-i", "input_json", metavar="JSON", help='Order input, e.g. \'{"quantity": 10}\'.')
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True)
@click.pass_obj
def demo(state: State, workers: int, db: str | None, input_json: str | None, timeout: float) -> None:
    """Run the bundled example on SQLite with local worker processes: a fan-out to three parallel nodes,
    an all-join, a retried failure, a durable timer and a conditional branch."""
    from flowcraft import demo as example

    run_input = _json_option(input_json, "--input") or example.DEFAULT_INPUT
    with tempfile.TemporaryDirectory(prefix="flowcraft-demo-") as scratch:
        db_path = Path(db).resolve() if db else Path(scratch) / "demo.db"
        db_path.parent.mkdir(parents=True, exist_ok=True)
        options = {"path": str(db_path)}
        # hermetic on purpose: neither the user's config files nor FLOWCRAFT_* variables reach the demo
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCRAFT_") or k == DISABLE_ENV}
        # a low concurrency per process, so the three parallel nodes spread over the processes
        args = [*(["--debug"] if state.debug else []), "worker", "--app", "flowcraft.demo:app", "--backend",
                "sqlite", "--option", f"path={db_path}", "--concurrency", "2"]
        pool = WorkerProcesses(args, workers, env=env, cwd=scratch, log=Path(scratch) / "workers.log")
        err = state.err
        err.print(f"[bold]Flowcraft demo[/]: workflow {example.BLUEPRINT_ID!r} "
                  f"({len(example.app.blueprints[example.BLUEPRINT_ID].nodes)} nodes) on SQLite "
                  f"[dim]{escape(str(db_path))}[/] with {workers} worker processes")

        def check() -> None:
            crashed = pool.failed()
            if crashed is not None:
                raise FlowcraftError(f"demo worker process {crashed.pid} exited with code {crashed.returncode}",
                                     hint="the workers' last output is printed above")

        async def main() -> RunResult:
            backend = registry().build("sqlite", options)
            try:
                await backend.setup()
                pids = pool.start()
                # the run starts once every worker listens, so the parallel nodes can spread over them
                await asyncio.to_thread(pool.wait_ready, "on backend sqlite", 30.0)
                err.print(f"started workers (pids {', '.join(map(str, pids))})")
                client = Client(backend, example.app)
                run_id = await client.start(example.BLUEPRINT_ID, run_input)
                return await watch(client, run_id, example.app.blueprints[example.BLUEPRINT_ID], err,
                                   timeout=timeout, describe=example.describe, check=check)
            finally:
                await backend.close()

        started = time.monotonic()
        try:
            result = _run(main())
        except Exception:
            tail = pool.log_tail()
            if tail:
                err.print(f"[dim]the workers' last output:\n{escape(tail)}[/]")
            raise
        finally:
            with err.status("stopping workers..."):
                pool.stop()
        elapsed = time.monotonic() - started
        _finish(state, result)
        pids = {out["pid"] for out in result.outputs.values() if isinstance(out, dict) and "pid" in out}
        skipped = sorted(node.id for node in example.app.blueprints[example.BLUEPRINT_ID].nodes
                         if node.id not in result.outputs)
        err.print(f"[green]run {result.run_id} {result.status}[/] in {elapsed:.1f}s; nodes ran in "
                  f"{len(pids)} worker process{'es' if len(pids) != 1 else ''}; "
                  f"skipped (untaken branch): {', '.join(skipped) or 'none'}")
        err.print("[dim]next: write your own flow (examples/quickstart.py), then `flowcraft worker --app "
                  "yourmodule:app` and `flowcraft run BLUEPRINT --wait`[/]")


# ---------------------------------------------------------------------------------------------- new-backend
@cli.command("new-backend")
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to create the distribution's directory flowcraft-NAME.")
@click.pass_obj
def new_backend(state: State, name: str, parent: Path) -> None:
    """Create a backend distribution, flowcraft-NAME, from the template: the four components keeping their
    data in memory (replace it with calls to your server), the plugin registering them as preset NAME, and
    the contract suite, which the template passes as generated (docs/writing-a-backend.md)."""
    from flowcraft.templates import new_backend as render

    root = render(name, parent)
    click.echo(str(root))  # the path alone on stdout, for scripts
    next_steps = (f'`cd {root}`, `pip install -e ".[test]"`, `pytest`; then replace the storage of each '
                  "component (its README.md says where)")
    state.err.print(f"[green]created {escape(root.name)}[/]: next, {escape(next_steps)}")


# the maintenance commands (retry, dead-letters, purge) register themselves on `cli`
from flowcraft import cli_maintain as cli_maintain  # noqa: E402

if __name__ == "__main__":
    main()
