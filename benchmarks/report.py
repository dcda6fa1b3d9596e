"""Markdown tables from result files, for benchmarks/README.md:

    python -m benchmarks.report benchmarks/results/memory.json benchmarks/results/rq-celery.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TIMES, DASH = "\u00d7", "\u2013"

#: (header, summary metric, digits, show min-max)
COLUMNS = (
    ("runs/s", "runs_per_s", 1, True),
    ("nodes/s", "nodes_per_s", 0, True),
    ("p50 ms", "p50_ms", 1, False),
    ("p95 ms", "p95_ms", 1, False),
    ("CPU µs/node", "cpu_us_per_node", 0, False),
    ("Redis CPU µs/node", "redis_cpu_us_per_node", 0, False),
    ("server CPU µs/node", "server_cpu_us_per_node", 0, False),
    ("round trips/node", "round_trips_per_node", 2, False),
    ("seq. round trips/node", "sequential_round_trips_per_node", 2, False),
    ("Redis cmds/node", "commands_per_node", 1, False),
)


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _cell(summary: dict[str, Any] | None, digits: int, show_range: bool) -> str:
    if not summary:
        return "—"
    text = _number(summary["median"], digits)
    if show_range and summary["min"] != summary["max"]:
        text += f" ({_number(summary['min'], digits)}{DASH}{_number(summary['max'], digits)})"
    return text


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    lines = [f"| system | backend | workload | procs{TIMES}conc | runs{TIMES}trials | "
             + " | ".join(c[0] for c in COLUMNS) + " |",
             "|" + "---|" * (5 + len(COLUMNS))]
    for report in reports:
        for cell in report["results"]:
            if not cell["trials"]:
                note = (cell.get("note") or "no trials").split(" (worker logs:")[0]
                lines.append(f"| {cell['system']} | {cell['backend']} | {cell['workload']} | | | {note} |"
                             + " |" * (len(COLUMNS) - 1))
                continue
            procs = "in-proc" if cell["processes"] == 0 else f"{cell['processes']}{TIMES}{cell['concurrency']}"
            runs = f"{cell['trials'][0]['runs']}{TIMES}{len(cell['trials'])}"
            values = [_cell(cell["summary"].get(metric), digits, show_range)
                      for _, metric, digits, show_range in COLUMNS]
            lines.append(f"| {cell['system']} | {cell['backend']} | {cell['workload']} | {procs} | {runs} | "
                         + " | ".join(values) + " |")
    lines += ["", *cost_markdown(reports)]
    comparisons = [c for report in reports for c in report.get("comparisons", [])]
    if comparisons:
        lines += ["", "| workload | workers | ours / peer | " + " | ".join(c[0] for c in COLUMNS) + " |",
                  "|" + "---|" * (3 + len(COLUMNS))]
        for comparison in comparisons:
            cells = []
            for _, metric, digits, _ in COLUMNS:
                entry = comparison.get(metric) or {}
                ratio = entry.get("ratio")
                peer = entry.get("peer", entry.get("celery"))  # results written before peers were general
                cells.append(f"{_number(entry.get('flowcraft'), digits)} / {_number(peer, digits)}"
                             f" = **{'—' if ratio is None else f'{ratio:.2f}{TIMES}'}**")
            lines.append(f"| {comparison['workload']} | {comparison.get('workers', '')} | {comparison['flowcraft']} / "
                         f"{comparison.get('peer', 'celery')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: the cost-per-node table: (header, summary metric, digits)
COST_COLUMNS = (
    ("nodes/s", "nodes_per_s", 0),
    ("worker+client CPU µs/node", "cpu_us_per_node", 0),
    ("Redis CPU µs/node", "redis_cpu_us_per_node", 0),
    ("round trips/node", "round_trips_per_node", 2),
)


def cost_markdown(reports: Sequence[dict[str, Any]]) -> list[str]:
    """Per workload and worker count, every system's cost per node (what predicts how it scales)."""
    cells = sorted((cell for report in reports for cell in report["results"] if cell["trials"]),
                   key=lambda cell: (cell["workload"], cell["processes"]))
    lines = ["| workload | workers | system | " + " | ".join(c[0] for c in COST_COLUMNS) + " |",
             "|" + "---|" * (3 + len(COST_COLUMNS))]
    for cell in cells:
        system = cell["system"] if cell["system"] != "flowcraft" else f"flowcraft {cell['backend']}"
        values = [_cell(cell["summary"].get(metric), digits, False) for _, metric, digits in COST_COLUMNS]
        workers = "in-proc" if cell["processes"] == 0 else str(cell["processes"])
        lines.append(f"| {cell['workload']} | {workers} | {system} | " + " | ".join(values) + " |")
    return lines


def machine_line(report: dict[str, Any]) -> str:
    machine = report["meta"]["machine"]
    load = machine.get("loadavg_start") or [None]
    load_text = "?" if load[0] is None else f"{load[0]:.2f}"
    return (f"{machine['nproc']} cores ({machine.get('cpu') or 'unknown CPU'}), Python {machine['python']}, "
            f"{machine['platform']}; load average {load_text} at start; {report['meta']['started']}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.files]
    for path, report in zip(args.files, reports, strict=True):
        print(f"- `{path.name}`: {machine_line(report)}")
    print()
    print(markdown(reports))


if __name__ == "__main__":
    main()
