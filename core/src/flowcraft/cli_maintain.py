"""Maintenance commands of the ``flowcraft`` CLI: ``retry`` (rerun a failed run from a node), ``dead-letters``
(list, replay, purge the queue's dead letters) and ``purge`` (retention: delete old finished runs).

Registered on ``flowcraft.cli.cli`` when that module is imported (its last lines import this one)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from flowcraft.cli import State, _client, _dumps, _load_app, _run, _when, app_option, backend_options, cli
from flowcraft.config import RETENTION_STATUSES
from flowcraft.errors import ConfigError
from flowcraft.model import parse_duration
from flowcraft.retention import PurgeStats
from flowcraft.spi import DeadLetter


@cli.command()
@click.argument("run_id")
@click.option("--from", "from_node", metavar="NODE",
              help="Rerun this node and everything downstream of it (default: the node(s) that failed the run).")
@app_option
@backend_options
@click.pass_obj
def retry(state: State, run_id: str, from_node: str | None, app: str | None, backend: str | None,
          options: Sequence[str]) -> None:
    """Resume a failed run after a fix: what finished upstream is kept, the node (--from NODE, else the failed
    node) runs again with the inputs it had, then everything downstream. The timeline keeps both attempts.
    Without an app, the run's blueprint is the one live workers published."""
    config = state.config(backend=backend, app=app, options=options)
    loaded = _load_app(config, required=False)

    async def main() -> int:
        async with _client(config, loaded) as client:
            return await client.retry(run_id, from_node)

    generation = _run(main())
    where = f" from node {escape(from_node)}" if from_node else " from its failed node(s)"
    state.err.print(f"retried run {run_id}{where} (retry {generation}); `flowcraft status {run_id}` follows it")


@cli.command("dead-letters")
@click.option("--replay", "replay_ids", metavar="ID", multiple=True,
              help="Put this dead letter's job back on the queue and remove the dead letter (repeatable).")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--purge", is_flag=True,
              help="Remove dead letters without replaying them: those given with --id, else all of them.")
@click.option("--id", "purge_ids", metavar="ID", multiple=True, help="With --purge: only this one (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="How many to list.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@backend_options
@click.pass_obj
def dead_letters(state: State, replay_ids: Sequence[str], replay_all: bool, purge: bool, purge_ids: Sequence[str],
                 limit: int, as_json: bool, backend: str | None, options: Sequence[str]) -> None:
    """List the queue's dead letters (jobs it could not deliver or that failed their run, with the reason), replay
    them (--replay ID, --all) or remove them (--purge). A queue that cannot remove its dead letters says so."""
    if sum((bool(replay_ids), replay_all, purge)) > 1:
        raise click.UsageError("use one of --replay ID, --all and --purge at a time")
    if purge_ids and not purge:
        raise click.UsageError("--id goes with --purge (to replay one, use --replay ID)")
    config = state.config(backend=backend, options=options)

    async def main() -> tuple[list[DeadLetter], int | None]:
        async with _client(config) as client:
            if replay_ids or replay_all:
                replayed = await client.replay_dead_letters(list(replay_ids) if replay_ids else None)
                return replayed, None
            if purge:
                return [], await client.purge_dead_letters(list(purge_ids) if purge_ids else None)
            return await client.dead_letters(limit), None

    letters, purged = _run(main())
    if purged is not None:
        click.echo(_dumps({"purged": purged}) if as_json else f"purged {purged} dead letter(s)")
        return
    if replay_ids or replay_all:
        missing = sorted(set(replay_ids) - {letter.id for letter in letters})
        if as_json:
            click.echo(_dumps({"replayed": [letter.to_dict() for letter in letters], "not_found": missing}))
        else:
            click.echo(f"replayed {len(letters)} dead letter(s)")
        if missing:
            raise ConfigError(f"no dead letter with id {missing[0]!r} that can be replayed",
                              hint="list them with `flowcraft dead-letters`")
        return
    if as_json:
        click.echo(_dumps([letter.to_dict() for letter in letters]))
        return
    if not letters:
        state.out.print("[dim]no dead letters[/]")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("id", "run", "node", "visit", "dead at", "reason"):
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "run", "visit"))
    for letter in letters:
        job = letter.job
        table.add_row(escape(letter.id or "-"), escape(job.run_id) if job else "-", escape(job.node_id) if job else "-",
                      str(job.visit) if job else "-", _when(letter.dead_at or 0.0), escape(letter.reason))
    state.out.print(table)


@cli.command("purge")
@click.option("--older-than", "older_than", metavar="AGE", required=True,
              help="Delete finished runs last updated longer ago than this, e.g. 12h, 7d.")
@click.option("--status", "statuses", type=click.Choice(RETENTION_STATUSES), multiple=True,
              help="Only runs with this status (repeatable; default: completed, failed and cancelled).")
@click.option("--dry-run", is_flag=True, help="List the runs it would delete, delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@backend_options
@click.pass_obj
def purge(state: State, older_than: str, statuses: Sequence[str], dry_run: bool, as_json: bool,
          backend: str | None, options: Sequence[str]) -> None:
    """Delete old finished runs: status record, context (outputs, timeline) and coordination data. The
    `retention` config setting does the same on every `flowcraft reconcile` pass."""
    try:
        age = parse_duration(older_than, "--older-than")
    except Exception as exc:
        raise click.BadParameter(f"{older_than!r} is not an age; write e.g. 12h or 7d",
                                 param_hint="--older-than") from exc
    config = state.config(backend=backend, options=options)

    async def main() -> PurgeStats:
        async with _client(config) as client:
            return await client.purge(age, statuses or RETENTION_STATUSES, dry_run=dry_run)

    started = time.monotonic()
    stats = _run(main())
    if as_json:
        click.echo(_dumps({**stats.to_dict(), "dry_run": dry_run}))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(stats.purged)} of {stats.scanned} finished run(s) "
               f"in {time.monotonic() - started:.1f}s")
    if dry_run:
        for run_id in stats.purged:
            click.echo(run_id)
