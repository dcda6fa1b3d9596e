"""What the operating commands print (``flowcraft status``, ``logs``, ``runs``, ``run --wait``, ``worker``):
a run's timeline as a rich table, its history as log lines, runs filtered by age, and the worker's logging
(``--log-format text|json``: every failure, retry, dead letter and reconciler action at INFO with the run
and node ids, as fields in JSON)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from flowcraft.engine.control import RunResult
from flowcraft.engine.timeline import NodeVisit
from flowcraft.errors import ConfigError
from flowcraft.model import parse_duration

LOG_FORMATS = ("text", "json")
#: ``extra`` fields of the engine's and reconciler's log records that the JSON format prints as fields
LOG_FIELDS = ("run_id", "node_id", "visit", "attempt", "blueprint_id", "event", "worker_id")
STATE_STYLES = {"done": "green", "skipped": "dim", "failed": "red", "cancelled": "red", "awaiting": "yellow",
                "running": "cyan", "pending": "blue"}


# ---------------------------------------------------------------------------------------------- timeline table
def timeline_table(timeline: Sequence[NodeVisit]) -> Table:
    """One row per node visit: state, attempts, worker, start, duration, the last error."""
    table = Table(title="timeline", title_justify="left", pad_edge=False, show_edge=False)
    for name, options in (("node", {"overflow": "fold"}), ("visit", {"justify": "right", "no_wrap": True}),
                          ("state", {"no_wrap": True}), ("attempts", {"justify": "right"}),
                          ("worker", {"overflow": "fold"}), ("started", {"no_wrap": True}),
                          ("duration", {"justify": "right", "no_wrap": True}), ("error", {"overflow": "fold"})):
        table.add_column(name, **options)
    for visit in timeline:
        style = STATE_STYLES.get(visit.state, "white")
        errors = [a.error for a in visit.attempts if a.error]
        error = visit.error or (errors[-1] if errors else "")
        if error and visit.state == "done":
            error = f"(recovered) {error}"
        shown = str(visit.iteration) + (f" (retry {visit.generation})" if visit.generation else "")
        table.add_row(escape(visit.node_id), shown, f"[{style}]{visit.state}[/]",
                      str(len(visit.attempts)) if visit.attempts else "-", escape(visit.worker or "-"),
                      clock(visit.started_at), seconds(visit.duration), escape(error))
    return table


def clock(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3] if timestamp else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


# ---------------------------------------------------------------------------------------------- run history
@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a run's history (``flowcraft logs``)."""

    at: float
    event: str
    node_id: str | None
    text: str
    visit: int | None = None
    attempt: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "event": self.event, "node_id": self.node_id, "visit": self.visit,
                "attempt": self.attempt, "text": self.text}

    def key(self) -> tuple[Any, ...]:
        return (self.event, self.node_id, self.visit, self.attempt)


def history(result: RunResult) -> list[LogLine]:
    """The run's history from its record and timeline, oldest first: created, each attempt started and
    finished or failed (with its worker and error), retries, skips, waits, the final status."""
    lines: list[LogLine] = []
    if result.created_at:
        lines.append(LogLine(result.created_at, "run:start", None, f"run {result.run_id} of blueprint "
                                                                  f"{result.blueprint_id} started"))
    for visit in result.timeline:
        name = visit.node_id if not visit.visit else f"{visit.node_id} (visit {visit.visit})"
        for index, attempt in enumerate(visit.attempts):
            where = f" on {attempt.worker}" if attempt.worker else ""
            if attempt.started_at is not None:
                lines.append(LogLine(attempt.started_at, "node:start", visit.node_id,
                                     f"{name}: attempt {attempt.attempt} started{where}", visit.visit,
                                     attempt.attempt))
            end = attempt.finished_at or attempt.started_at or visit.finished_at or 0.0
            last = index == len(visit.attempts) - 1
            if attempt.error and not (last and visit.state == "failed"):
                then = "retrying" if not last or visit.state != "done" else f"fallback {visit.fallback}"
                lines.append(LogLine(end, "node:error", visit.node_id, f"{name}: attempt {attempt.attempt} failed "
                                                                       f"({seconds(attempt.duration)}): "
                                                                       f"{attempt.error}; {then}",
                                     visit.visit, attempt.attempt))
            elif last and visit.state == "done":
                action = f", action {visit.action}" if visit.action else ""
                lines.append(LogLine(end, "node:finish", visit.node_id, f"{name}: done in "
                                                                        f"{seconds(attempt.duration)}{action}",
                                     visit.visit, attempt.attempt))
        if visit.state == "failed":
            lines.append(LogLine(visit.finished_at or 0.0, "node:failed", visit.node_id,
                                 f"{name}: failed after {len(visit.attempts)} attempt(s): {visit.error}", visit.visit))
        elif visit.state == "done" and not visit.attempts:
            lines.append(LogLine(visit.finished_at or 0.0, "node:finish", visit.node_id, f"{name}: done", visit.visit))
        elif visit.state == "skipped":
            lines.append(LogLine(visit.finished_at or 0.0, "node:skipped", visit.node_id, f"{name}: skipped",
                                 visit.visit))
        elif visit.state in ("running", "pending", "awaiting", "cancelled") and not visit.attempts:
            at = visit.started_at or result.updated_at or result.created_at  # when the run last changed
            lines.append(LogLine(at, f"node:{visit.state}", visit.node_id, f"{name}: {visit.state}", visit.visit))
    if result.status in ("completed", "failed", "cancelled") and result.updated_at:
        errors = "; ".join(str(e.get("message")) for e in result.errors)
        lines.append(LogLine(result.updated_at, "run:finish", None, f"run {result.status}"
                                                                   + (f": {errors}" if errors else "")))
    elif result.status == "awaiting":
        nodes = ", ".join(str(a.get("node_id")) for a in result.awaiting)
        lines.append(LogLine(result.updated_at or time.time(), "run:awaiting", None, f"run awaiting at {nodes}"))
    return sorted(lines, key=lambda line: line.at)


def format_line(line: LogLine) -> str:
    stamp = datetime.fromtimestamp(line.at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if line.at else "-"
    return f"{stamp}  {line.text}"


# ---------------------------------------------------------------------------------------------- runs by age
def age_seconds(text: str | None, option: str) -> float | None:
    """``--since``/``--older-than``: '30s', '15m', '2h', '7d' or seconds."""
    if text is None:
        return None
    try:
        return parse_duration(text, option)
    except Exception:
        raise ConfigError(f"{option}: expected an age like 30s, 15m, 2h or 7d, got {text!r}",
                          hint="write a number with a unit s, m, h or d") from None




# ---------------------------------------------------------------------------------------------- worker logging
class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO 8601), level, logger, message, the run/node ids as fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for name in LOG_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _WorkerId(logging.Filter):
    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "worker_id", None) is None:
            record.worker_id = self.worker_id
        return True


def configure_logging(log_format: str, *, debug: bool = False) -> None:
    """Flowcraft's loggers at INFO (DEBUG with ``--debug``) on stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    logging.getLogger("flowcraft").setLevel(logging.DEBUG if debug else logging.INFO)


def tag_worker(worker_id: str) -> None:
    """Every log record of this process carries ``worker_id`` (a field in JSON)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerId(worker_id))


def worker_summary(handled: int, counts: dict[str, int], unexpected: int) -> str:
    """The worker's closing line: jobs handled, node attempts that failed (and how many were retried),
    runs failed, jobs dead-lettered, unexpected errors."""
    return (f"{handled} jobs handled, {counts.get('failed_attempts', 0)} node attempts failed "
            f"({counts.get('retries', 0)} retried), {counts.get('failed_runs', 0)} runs failed, "
            f"{counts.get('dead_letters', 0)} dead-lettered, {unexpected} unexpected errors")
