"""``python -m flowcraft.chaos --backend NAME --runs N --seconds S --workers W``: see ``flowcraft.chaos``."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from flowcraft.chaos.harness import ChaosError, ChaosOptions, run_chaos
from flowcraft.chaos.verify import SHAPES


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value


def parse_args(argv: Sequence[str] | None = None) -> ChaosOptions:
    parser = argparse.ArgumentParser(prog="python -m flowcraft.chaos", description=__doc__)
    parser.add_argument("--backend", required=True, help="backend preset (sqlite, rq, sqs or a plugin's)")
    parser.add_argument("--runs", type=int, default=200, help="runs to submit (default 200)")
    parser.add_argument("--seconds", type=float, default=40.0, help="seconds of worker kills (default 40)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs in flight per worker (default 8)")
    parser.add_argument("--kill-min", type=float, default=0.3, help="shortest pause between kills (default 0.3 s)")
    parser.add_argument("--kill-max", type=float, default=1.0, help="longest pause between kills (default 1.0 s)")
    parser.add_argument("--option", "-o", dest="options", action="append", type=_key_value, default=[],
                        metavar="KEY=VALUE", help="backend option, as for `flowcraft worker` (repeatable)")
    parser.add_argument("--restart-server", metavar="CMD",
                        help="command that restarts the backend's server, run once halfway through the kills")
    parser.add_argument("--reconcile-threshold", type=float, default=2.0,
                        help="`flowcraft reconcile --threshold` (default 2 s)")
    parser.add_argument("--settle-timeout", type=float, default=180.0,
                        help="seconds runs may take to end after the kills (default 180)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"workflows to mix (default {','.join(SHAPES)})")
    parser.add_argument("--seed", type=int, help="random seed (kill times, inputs)")
    parser.add_argument("--workdir", type=Path, help="where logs and the execution log go (default: a temp dir)")
    args = parser.parse_args(argv)
    return ChaosOptions(
        backend=args.backend, runs=args.runs, seconds=args.seconds, workers=args.workers,
        concurrency=args.concurrency, kill_min=args.kill_min, kill_max=args.kill_max, options=dict(args.options),
        restart_server=shlex.split(args.restart_server) if args.restart_server else None,
        reconcile_threshold=args.reconcile_threshold, settle_timeout=args.settle_timeout,
        shapes=tuple(s.strip() for s in args.shapes.split(",") if s.strip()), seed=args.seed,
        workdir=args.workdir,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so the harness's cleanup stops its workers and servers by PID


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a harness stopped by SIGTERM must not orphan its workers
    try:
        report = asyncio.run(run_chaos(options))
    except KeyboardInterrupt:
        print("interrupted: workers stopped, no verdict", file=sys.stderr)
        return 130
    except ChaosError as exc:
        print(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    print(report.line())
    print(report.details())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
