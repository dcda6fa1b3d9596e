"""``flowcraft dashboard``: a small web UI over any backend (issue 18, item 9).

An ASGI app (Starlette; ``pip install "flowcraft-core[dashboard]"``) rendering HTML on the server, with htmx
(vendored in ``static/htmx.min.js``, no Node build step) refreshing the runs list and a running run's page:

* ``/``: runs, newest first, filtered by status and blueprint, refreshed every ``refresh`` seconds; a form
  starting a run of a blueprint the app has or a live worker published;
* ``/runs/{run_id}``: the run's graph (server-side SVG, each node coloured by the state of its latest visit),
  timeline (visits, attempts with worker, duration and error), outputs, errors and dead letters, with
  buttons to resume a waiting node (with an action and an output), cancel, and retry from a node;
* ``/blueprints``: the blueprints of the app and those live workers published, each with its graph;
* ``/dead-letters``: the queue's dead letters with replay buttons;
* ``/workers``: live workers from their heartbeats (``Client.workers``).

Read-only unless started with a token: every action (POST) then needs it, given once on ``/login`` (kept in
an HTTP-only, same-site cookie) or as ``Authorization: Bearer <token>``. Without a token every action is
refused with 403.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from flowcraft.client import Client
from flowcraft.engine.graph import analyze
from flowcraft.engine.timeline import NodeVisit
from flowcraft.errors import ConfigError, FlowcraftError
from flowcraft.model import Blueprint
from flowcraft.spi import FINAL_STATUSES

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError("the dashboard needs Starlette and uvicorn",
                      hint='pip install "flowcraft-core[dashboard]"') from exc

STATIC = Path(__file__).parent / "static"
COOKIE = "flowcraft_dashboard_token"
STATUSES = ("running", "awaiting", "completed", "failed", "cancelled")
#: the runs list's "created within" filter: label -> seconds
SINCE = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 604800.0}
#: node states and their fill colours in the graph
STATE_COLOURS = {"pending": "#ffffff", "running": "#9ecbff", "done": "#8fd19e", "skipped": "#d6d6d6",
                 "failed": "#f5a3a3", "awaiting": "#ffd37a", "cancelled": "#a0a0a0"}

ClientFactory = Callable[[], Client]

CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222}
header{background:#263238;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff;text-decoration:none}header .mode{margin-left:auto;font-size:.85em;opacity:.8}
main{padding:1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}pre{background:#f7f7f7;padding:.5em;margin:0;
max-width:60em;overflow:auto}.status{padding:.1em .5em;border-radius:.8em;font-size:.9em}
.status-completed{background:#8fd19e}.status-failed{background:#f5a3a3}.status-running{background:#9ecbff}
.status-awaiting{background:#ffd37a}.status-cancelled{background:#a0a0a0}.status-done{background:#8fd19e}
.status-skipped{background:#d6d6d6}.status-pending{background:#eee}.error{color:#b00020}
form.inline{display:inline-block;margin:.2em .8em .2em 0}section{margin-bottom:1.2em}
.flash{background:#fff3cd;padding:.5em;border:1px solid #e0c060}
"""


def create_app(client_factory: ClientFactory, *, token: str | None = None, refresh: float = 2.0) -> Starlette:
    """The dashboard's ASGI app. ``client_factory`` builds the ``Client`` when the app starts (inside the
    server's event loop; closed when it stops). ``token``: enables the actions, each then needing it;
    None keeps the dashboard read-only. ``refresh``: seconds between refreshes of live parts."""
    if token is not None and not token.strip():
        raise ConfigError("the dashboard token is empty", hint="pass a non-empty --token, or none for read-only")
    holder: dict[str, Client] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        holder["client"] = client_factory()
        try:
            yield
        finally:
            await holder.pop("client").close()

    def client() -> Client:
        return holder["client"]

    def authorised(request: Request) -> bool:
        if token is None:
            return False
        given = request.cookies.get(COOKIE) or ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), token.encode())

    def page(request: Request, title: str, body: str, status_code: int = 200) -> HTMLResponse:
        if token is None:
            mode = "read-only"
        elif authorised(request):
            mode = "actions enabled"
        else:
            mode = '<a href="/login">log in for actions</a>'
        flash = request.query_params.get("flash")
        notice = f'<p class="flash" id="flash">{escape(flash)}</p>' if flash else ""
        return HTMLResponse(
            f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)} · Flowcraft</title>'
            f'<script src="/static/htmx.min.js"></script><style>{CSS}</style></head><body>'
            f'<header><strong>Flowcraft</strong><a href="/">Runs</a><a href="/blueprints">Blueprints</a>'
            f'<a href="/dead-letters">Dead letters</a><a href="/workers">Workers</a>'
            f'<span class="mode">{mode}</span></header>'
            f'<main>{notice}<h1>{escape(title)}</h1>{body}</main></body></html>', status_code=status_code)

    def refuse(request: Request) -> Response | None:
        if token is None:
            return HTMLResponse("read-only dashboard: start it with --token (or FLOWCRAFT_DASHBOARD_TOKEN) to "
                                "enable actions", status_code=403)
        if not authorised(request):
            return HTMLResponse("this action needs the dashboard token: log in on /login", status_code=403)
        return None

    def back(path: str, flash: str) -> RedirectResponse:
        return RedirectResponse(f"{path}?flash={quote(flash)}", status_code=303)

    # ------------------------------------------------------------------ runs
    async def runs_page(request: Request) -> Response:
        status = request.query_params.get("status") or ""
        blueprint = request.query_params.get("blueprint") or ""
        options = "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>'
                          for s in ("", *STATUSES))
        ids = sorted(await blueprint_ids())
        start = ""
        if token is not None and authorised(request):
            choices = "".join(f'<option value="{escape(i)}">{escape(i)}</option>' for i in ids)
            start = (f'<section><h2>Start a run</h2><form method="post" action="/runs" id="start">'
                     f'<select name="blueprint_id">{choices}</select> input (JSON) '
                     f'<input name="input" size="40" placeholder="null"> <button>Start</button></form></section>')
        since = request.query_params.get("since") or ""
        ages = "".join(f'<option value="{a}"{" selected" if a == since else ""}>{a or "any time"}</option>'
                       for a in ("", *SINCE))
        query = escape(urlencode({"status": status, "blueprint": blueprint, "since": since}))
        body = (f'{start}<form method="get" action="/" id="filters">status <select name="status">{options}</select>'
                f' blueprint <input name="blueprint" value="{escape(blueprint)}"> created within <select '
                f'name="since">{ages}</select> <button>Filter</button></form>'
                f'<div id="runs" hx-get="/fragments/runs?{query}" hx-trigger="every {refresh}s" '
                f'hx-swap="innerHTML">{await runs_table(status or None, blueprint or None, since)}</div>')
        return page(request, "Runs", body)

    async def runs_fragment(request: Request) -> Response:
        return HTMLResponse(await runs_table(request.query_params.get("status") or None,
                                             request.query_params.get("blueprint") or None,
                                             request.query_params.get("since") or ""))

    async def runs_table(status: str | None, blueprint: str | None, since: str = "") -> str:
        """Up to 50 runs, newest first; ``since``: one of ``SINCE`` (created within), "" for any time."""
        if status is not None and status not in STATUSES:
            return f'<p class="error">unknown status {escape(status)!s}; one of {", ".join(STATUSES)}</p>'
        if since and since not in SINCE:
            return f'<p class="error">unknown age {escape(since)!s}; one of {", ".join(SINCE)}</p>'
        after = time.time() - SINCE[since] if since else None
        records, _ = await client().runs(status, blueprint, 50, created_after=after)
        if not records:
            return "<p>No runs.</p>"
        rows = "".join(
            f'<tr data-run="{escape(r.run_id)}"><td><a href="/runs/{escape(r.run_id)}">{escape(r.run_id)}</a></td>'
            f'<td>{escape(r.blueprint_id)}</td><td>{_status(r.status)}</td><td>{_when(r.created_at)}</td>'
            f'<td>{_when(r.updated_at)}</td></tr>' for r in records)
        return ("<table><tr><th>run</th><th>blueprint</th><th>status</th><th>created</th><th>updated</th></tr>"
                f"{rows}</table>")

    async def blueprint_ids() -> set[str]:
        ids = set(client().app.blueprints)
        with contextlib.suppress(FlowcraftError):
            ids |= {entry.id for entry in await client().blueprints()}
        return ids

    async def start_run(request: Request) -> Response:
        refused = refuse(request)
        if refused is not None:
            return refused
        form = await request.form()
        try:
            run_id = await client().start(str(form.get("blueprint_id") or ""), _json(form.get("input")))
        except (FlowcraftError, ValueError) as exc:
            return back("/", f"not started: {exc}")
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    # ------------------------------------------------------------------ a run
    async def run_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if await client().backend.status.get(run_id) is None:
            return page(request, "Run not found", f"<p>No run {escape(run_id)}.</p>", 404)
        return page(request, f"Run {run_id}", await run_fragment_html(request, run_id))

    async def run_fragment(request: Request) -> Response:
        try:
            return HTMLResponse(await run_fragment_html(request, request.path_params["run_id"]))
        except FlowcraftError as exc:  # e.g. the run was purged while its page was open
            return HTMLResponse(f'<div id="run"><p class="error">{escape(str(exc))}</p></div>', status_code=404)

    async def run_fragment_html(request: Request, run_id: str) -> str:
        result = await client().status(run_id)
        blueprint = await client().blueprint(result.blueprint_id)
        live = result.status not in FINAL_STATUSES and result.status != "awaiting"
        poll = (f' hx-get="/fragments/runs/{escape(run_id)}" hx-trigger="every {refresh}s" hx-swap="outerHTML"'
                if live else "")
        states = _latest_states(result.timeline)
        graph = _svg(blueprint, states) if blueprint is not None else "<p>(blueprint not available here)</p>"
        parts = [f'<p>blueprint <a href="/blueprints#{escape(result.blueprint_id)}">{escape(result.blueprint_id)}'
                 f'</a> · status <span id="run-status" data-status="{result.status}">{_status(result.status)}</span>'
                 f' · created {_when(result.created_at)} · updated {_when(result.updated_at)}</p>',
                 f'<section><h2>Graph</h2>{graph}</section>']
        if token is not None and authorised(request):
            parts.append(f'<section id="actions"><h2>Actions</h2>{_actions(run_id, result, blueprint)}</section>')
        parts.append(f'<section><h2>Timeline</h2>{_timeline(result.timeline)}</section>')
        if result.errors:
            parts.append(f'<section id="errors"><h2>Errors</h2><pre class="error">{_pretty(result.errors)}</pre>'
                         '</section>')
        if result.dead_letters:
            parts.append(f'<section id="run-dead-letters"><h2>Dead letters</h2><pre class="error">'
                         f'{_pretty(result.dead_letters)}</pre><p><a href="/dead-letters">replay them</a></p>'
                         '</section>')
        if result.awaiting:
            parts.append(f'<section><h2>Awaiting</h2><pre>{_pretty(result.awaiting)}</pre></section>')
        parts.append(f'<section id="outputs"><h2>Outputs</h2><pre>{_pretty(result.outputs)}</pre>'
                     f'<h3>Output</h3><pre id="output">{_pretty(result.output)}</pre></section>')
        return f'<div id="run"{poll}>{"".join(parts)}</div>'

    async def resume_run(request: Request) -> Response:
        return await act(request, "resume")

    async def cancel_run(request: Request) -> Response:
        return await act(request, "cancel")

    async def retry_run(request: Request) -> Response:
        return await act(request, "retry")

    async def act(request: Request, what: str) -> Response:
        refused = refuse(request)
        if refused is not None:
            return refused
        run_id = request.path_params["run_id"]
        form = await request.form()
        node = str(form.get("node_id") or "") or None
        try:
            if what == "resume":
                action = str(form.get("action") or "") or None
                await client().resume(run_id, action, _json(form.get("output")), node)
                message = f"resumed{' with action ' + action if action else ''}"
            elif what == "cancel":
                message = "cancelled" if await client().cancel(run_id) else "nothing to cancel"
            else:
                generation = await client().retry(run_id, node)
                message = f"retried{' from ' + node if node else ''} (generation {generation})"
        except (FlowcraftError, ValueError) as exc:
            message = f"{what} refused: {exc}"
        return back(f"/runs/{run_id}", message)

    # ------------------------------------------------------------------ blueprints, dead letters
    async def blueprints_page(request: Request) -> Response:
        found: dict[str, tuple[Blueprint, str]] = {
            bid: (bp, "this dashboard's app") for bid, bp in client().app.blueprints.items()}
        with contextlib.suppress(FlowcraftError):
            for entry in await client().blueprints():
                found.setdefault(entry.id, (entry.blueprint, f"version {entry.version or entry.hash} published by "
                                                             f"{', '.join(entry.workers)}"))
        if not found:
            return page(request, "Blueprints", "<p>No blueprints: start a worker, or pass --app.</p>")
        body = "".join(f'<section id="{escape(bid)}" class="blueprint"><h2>{escape(bid)}</h2><p>{escape(where)}</p>'
                       f'{_svg(bp, {})}</section>' for bid, (bp, where) in sorted(found.items()))
        return page(request, "Blueprints", body)

    async def dead_letters_page(request: Request) -> Response:
        letters = await client().dead_letters(100)
        can_act = token is not None and authorised(request)
        if not letters:
            return page(request, "Dead letters", "<p>No dead letters.</p>")
        rows = []
        for letter in letters:
            job = letter.job
            run = (f'<a href="/runs/{escape(job.run_id)}">{escape(job.run_id)}</a> {escape(job.key)}'
                   if job is not None else "(unreadable job)")
            replay = (f'<form class="inline" method="post" action="/dead-letters/replay"><input type="hidden" '
                      f'name="id" value="{escape(letter.id)}"><button>Replay</button></form>'
                      if can_act and letter.id else "")
            rows.append(f'<tr><td>{escape(letter.id)}</td><td>{run}</td><td class="error">{escape(letter.reason)}'
                        f'</td><td>{_when(letter.dead_at or 0)}</td><td>{replay}</td></tr>')
        replay_all = ('<form method="post" action="/dead-letters/replay"><button>Replay all</button></form>'
                      if can_act else "")
        return page(request, "Dead letters", "<table><tr><th>id</th><th>job</th><th>reason</th><th>dead at</th>"
                                              f"<th></th></tr>{''.join(rows)}</table>{replay_all}")

    async def replay(request: Request) -> Response:
        refused = refuse(request)
        if refused is not None:
            return refused
        form = await request.form()
        ids = [str(form["id"])] if form.get("id") else None
        try:
            replayed = await client().replay_dead_letters(ids)
        except FlowcraftError as exc:
            return back("/dead-letters", f"replay refused: {exc}")
        return back("/dead-letters", f"replayed {len(replayed)} dead letter(s)")

    async def workers_page(request: Request) -> Response:
        live = await client().workers()
        if not live:
            return page(request, "Workers", "<p>No live worker.</p>")
        rows = "".join(
            f'<tr data-worker="{escape(w.worker_id)}"><td>{escape(w.worker_id)}</td><td>{escape(w.host)}</td>'
            f'<td>{w.pid}</td><td>{escape(w.backend)}</td><td>{escape(w.state)}</td><td>{w.concurrency}</td>'
            f'<td>{w.in_flight}</td><td>{w.handled}</td><td>{w.failed}</td><td>{_when(w.heartbeat_at)}</td>'
            f'<td class="protocol">{escape(w.protocol or "unknown")}</td>'
            f'<td>{escape(", ".join(str(b.get("id")) for b in w.blueprints))}</td></tr>' for w in live)
        return page(request, "Workers", "<table><tr><th>worker</th><th>host</th><th>pid</th><th>backend</th>"
                                         "<th>state</th><th>concurrency</th><th>in flight</th><th>handled</th>"
                                         "<th>failed</th><th>heartbeat</th><th>protocol</th><th>blueprints</th></tr>"
                                         f"{rows}</table>")

    # ------------------------------------------------------------------ login
    async def login(request: Request) -> Response:
        if token is None:
            return page(request, "Log in", "<p>This dashboard is read-only (started without --token).</p>")
        if request.method == "POST":
            form = await request.form()
            given = str(form.get("token") or "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return page(request, "Log in", '<p class="error">wrong token</p>' + _login_form(), 403)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
            return response
        return page(request, "Log in", _login_form())

    return Starlette(routes=[
        Route("/", runs_page),
        Route("/fragments/runs", runs_fragment),
        Route("/runs", start_run, methods=["POST"]),
        Route("/runs/{run_id}", run_page),
        Route("/fragments/runs/{run_id}", run_fragment),
        Route("/runs/{run_id}/resume", resume_run, methods=["POST"]),
        Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/runs/{run_id}/retry", retry_run, methods=["POST"]),
        Route("/blueprints", blueprints_page),
        Route("/dead-letters", dead_letters_page),
        Route("/workers", workers_page),
        Route("/dead-letters/replay", replay, methods=["POST"]),
        Route("/login", login, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)


# ---------------------------------------------------------------------------------------------- rendering
def _login_form() -> str:
    return ('<form method="post" action="/login" id="login">token <input type="password" name="token"> '
            '<button>Log in</button></form>')


def _json(value: Any) -> Any:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc}); write e.g. {{\"approved\": true}} or \"text\"") from None


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def _status(status: str) -> str:
    return f'<span class="status status-{escape(status)}">{escape(status)}</span>'


def _pretty(value: Any) -> str:
    return escape(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _latest_states(timeline: Sequence[NodeVisit]) -> dict[str, str]:
    """Each node's state in its latest visit (highest generation, then visit)."""
    latest: dict[str, NodeVisit] = {}
    for visit in timeline:
        if visit.node_id not in latest or visit.visit >= latest[visit.node_id].visit:
            latest[visit.node_id] = visit
    return {node_id: visit.state for node_id, visit in latest.items()}


def _visit(visit: NodeVisit) -> str:
    """A visit as the CLI's timeline shows it: its iteration, and '(retry N)' in a retried generation."""
    return f"{visit.iteration}{f' (retry {visit.generation})' if visit.generation else ''}"


def _timeline(timeline: Sequence[NodeVisit]) -> str:
    if not timeline:
        return "<p>Nothing ran yet.</p>"
    rows = []
    for visit in timeline:
        attempts = "<br>".join(
            f"#{a.attempt} {escape(a.worker or '-')} "
            f"{'' if a.duration is None else f'{a.duration * 1000:.0f} ms'}"
            f"{'' if a.error is None else ' <span class=error>' + escape(a.error) + '</span>'}"
            for a in visit.attempts)
        rows.append(f'<tr data-node="{escape(visit.node_id)}" data-state="{escape(visit.state)}">'
                    f'<td>{escape(visit.node_id)}</td><td>{_visit(visit)}</td><td>{_status(visit.state)}</td>'
                    f'<td>{escape(visit.action or "")}</td><td>{attempts}</td><td>{_when(visit.started_at)}</td>'
                    f'<td class="error">{escape(visit.error or "")}</td></tr>')
    return ("<table><tr><th>node</th><th>visit</th><th>state</th><th>action</th><th>attempts</th><th>started</th>"
            f"<th>error</th></tr>{''.join(rows)}</table>")


def _actions(run_id: str, result: Any, blueprint: Blueprint | None) -> str:
    rid = escape(run_id)
    forms = []
    if result.status == "awaiting" or result.awaiting:
        nodes = "".join(f'<option value="{escape(str(a.get("node_id", "")))}">{escape(str(a.get("node_id", "")))}'
                        '</option>' for a in result.awaiting)
        forms.append(f'<form class="inline" id="resume" method="post" action="/runs/{rid}/resume">'
                     f'node <select name="node_id">{nodes}</select> action <input name="action" size="10"> '
                     f'output (JSON) <input name="output" size="20"> <button>Resume</button></form>')
    if result.status not in FINAL_STATUSES:
        forms.append(f'<form class="inline" id="cancel" method="post" action="/runs/{rid}/cancel">'
                     '<button>Cancel</button></form>')
    if result.status == "failed":
        nodes = "".join(f'<option value="{escape(n.id)}">{escape(n.id)}</option>'
                        for n in (blueprint.nodes if blueprint is not None else ()))
        forms.append(f'<form class="inline" id="retry" method="post" action="/runs/{rid}/retry">'
                     f'from node <select name="node_id"><option value="">(the failed nodes)</option>{nodes}'
                     '</select> <button>Retry</button></form>')
    return "".join(forms) or "<p>No action applies to this run.</p>"


def _svg(blueprint: Blueprint, states: Mapping[str, str]) -> str:
    """The blueprint's graph as SVG: nodes in columns by their longest forward path from a start node, each
    filled with the colour of its state (``STATE_COLOURS``); back edges (loops) dashed."""
    graph = analyze(blueprint)
    level: dict[str, int] = {}

    def depth(node_id: str, seen: frozenset[str] = frozenset()) -> int:
        if node_id not in level:
            preds = [p for p in graph.nodes[node_id].forward_preds if p in graph.nodes and p not in seen]
            level[node_id] = 1 + max((depth(p, seen | {node_id}) for p in preds), default=-1)
        return level[node_id]

    columns: dict[int, list[str]] = {}
    for node in blueprint.nodes:
        columns.setdefault(depth(node.id), []).append(node.id)
    width, height, gap_x, gap_y = 130, 36, 60, 24
    pos = {nid: (20 + col * (width + gap_x), 20 + row * (height + gap_y))
           for col, ids in columns.items() for row, nid in enumerate(ids)}
    total_w = 40 + (max(columns, default=0) + 1) * (width + gap_x) - gap_x
    total_h = 40 + max((len(ids) for ids in columns.values()), default=1) * (height + gap_y) - gap_y
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
             f'viewBox="0 0 {total_w} {total_h}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
             'markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>']
    for edge in blueprint.edges:
        if edge.source not in pos or edge.target not in pos:
            continue
        (x1, y1), (x2, y2) = pos[edge.source], pos[edge.target]
        back = level.get(edge.target, 0) <= level.get(edge.source, 0)
        sx, sy, tx, ty = float(x1 + width), y1 + height / 2, float(x2), y2 + height / 2
        if back:
            sx, tx = x1 + width / 2, x2 + width / 2
            sy, ty = y1 + height, y2 + height
        dash = ' stroke-dasharray="4 3"' if back else ""
        parts.append(f'<line x1="{sx}" y1="{sy}" x2="{tx}" y2="{ty}" stroke="#555"{dash} '
                     'marker-end="url(#arrow)"/>')
        if edge.action:
            parts.append(f'<text x="{(sx + tx) / 2}" y="{(sy + ty) / 2 - 4}" font-size="10" text-anchor="middle" '
                         f'fill="#555">{escape(edge.action)}</text>')
    for nid, (x, y) in pos.items():
        state = states.get(nid, "pending" if states else "")
        fill = STATE_COLOURS.get(state, "#eef3f8")
        label = nid if len(nid) <= 16 else nid[:15] + "…"
        parts.append(f'<g class="node" data-node="{escape(nid)}" data-state="{escape(state)}"><title>{escape(nid)}'
                     f'{": " + escape(state) if state else ""}</title><rect x="{x}" y="{y}" width="{width}" '
                     f'height="{height}" rx="6" fill="{fill}" stroke="#333"/><text x="{x + width / 2}" '
                     f'y="{y + height / 2 + 4}" font-size="12" text-anchor="middle">{escape(label)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def serve(client_factory: ClientFactory, *, host: str = "127.0.0.1", port: int = 8787, token: str | None = None,
          refresh: float = 2.0) -> None:
    """Serve the dashboard with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("the dashboard needs uvicorn", hint='pip install "flowcraft-core[dashboard]"') from None
    app = create_app(client_factory, token=token, refresh=refresh)
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["STATE_COLOURS", "create_app", "serve"]
