"""Component options (flowcraft.options): coercion, unknown keys, bad values, pass-through for components
without a schema, and what the CLI shows (`flowcraft backends --options`, `flowcraft config`); read-only
commands never create a database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowcraft.backends.memory import MemoryContextStore, MemoryCoordinationStore, MemoryQueue, MemoryStatusStore
from flowcraft.backends.sqlite import DEFAULT_PATH, SqliteOptions
from flowcraft.cli import cli
from flowcraft.errors import ConfigError
from flowcraft.options import describe_options, option, parse_options, resolve_options, validate_options
from flowcraft.plugins import registry
from flowcraft.spi import Component


@dataclass(frozen=True)
class Example:
    count: int = option(1, "how many")
    ratio: float = option(0.5, "how much")
    enabled: bool = option(False, "whether")
    label: str = option("x", "what")
    where: Path = option(Path("a.db"), "where")  # noqa: RUF009  # option() is a dataclasses.field
    limit: int | None = option(None, "an optional bound")
    token: str | None = option(None, "a credential", secret=True)


class ExampleQueue(MemoryQueue):
    Options = Example


class UndeclaredContext(MemoryContextStore):
    """A third-party component written before schemas: it declares no options."""

    Options = None


MEMORY: dict[str, type[Component]] = {"queue": MemoryQueue, "context": MemoryContextStore,
                                      "status": MemoryStatusStore, "coordination": MemoryCoordinationStore}


# ---------------------------------------------------------------------------------------------- coercion
def test_strings_from_the_command_line_and_env_are_coerced_to_the_field_types() -> None:
    parsed = parse_options(Example, {"count": " 7", "ratio": "2.5", "enabled": "yes", "label": "y",
                                     "where": "dir/b.db", "limit": "3", "token": "s3cret"})
    assert parsed == Example(count=7, ratio=2.5, enabled=True, label="y", where=Path("dir/b.db"), limit=3,
                             token="s3cret")


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("true", True), ("On", True), ("0", False),
                                                ("false", False), ("no", False), ("OFF", False)])
def test_booleans_are_spelled_like_env_flags(text: str, expected: bool) -> None:
    assert parse_options(Example, {"enabled": text}).enabled is expected


def test_typed_values_from_toml_are_kept_and_whole_floats_are_integers() -> None:
    parsed = parse_options(Example, {"count": 4.0, "ratio": 3, "enabled": True, "where": Path("c.db")})
    assert (parsed.count, parsed.ratio, parsed.enabled, parsed.where) == (4, 3.0, True, Path("c.db"))
    assert isinstance(parsed.ratio, float)


def test_an_empty_string_or_none_means_not_set() -> None:
    assert parse_options(Example, {"count": "", "label": "", "limit": None}) == Example()


def test_keys_of_other_components_are_left_to_them() -> None:
    assert parse_options(Example, {"redis_url": "redis://h"}) == Example()


# ---------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(("key", "value", "message"), [
    ("busy_timeout", "abc", "option busy_timeout: expected a number, got 'abc'"),
    ("busy_timeout", "nan", "option busy_timeout: expected a number, got 'nan'"),
    ("busy_timeout", True, "option busy_timeout: expected a number, got True"),
    ("read_only", "maybe", "option read_only: expected true or false, got 'maybe'"),
    ("path", 5, "option path: expected a path, got 5"),
    ("busy_timeout", "-1", "option busy_timeout: must be zero or more seconds, got -1.0"),
    ("visibility_timeout", "0", "option visibility_timeout: must be a positive number of seconds, got 0.0"),
])
def test_a_bad_value_is_one_line_naming_the_option(tmp_path: Path, key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        registry().build("sqlite", {"path": str(tmp_path / "db"), key: value})
    assert caught.value.args[0] == message


def test_a_whole_number_field_refuses_fractions_and_words() -> None:
    for value in ("2.5", "two", 2.5):
        with pytest.raises(ConfigError, match=r"^option count: expected a whole number, got "):
            parse_options(Example, {"count": value})


def test_a_bad_value_of_a_secret_option_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_options("custom", {"queue": ExampleQueue}, {"token": 12345})
    assert caught.value.args[0] == "option token: expected a string, got ***"


# ---------------------------------------------------------------------------------------------- unknown keys
def test_an_unknown_key_is_refused_with_the_closest_known_one() -> None:
    with pytest.raises(ConfigError) as caught:
        registry().build("sqlite", {"busy_timout": "5"})
    assert caught.value.args[0] == "unknown option 'busy_timout' for backend 'sqlite'; did you mean 'busy_timeout'?"
    assert caught.value.hint == ("`flowcraft backends --options sqlite` lists them: busy_timeout, path, read_only, "
                                 "visibility_timeout")


def test_an_unknown_key_like_nothing_known_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as caught:
        registry().build("memory", {"zzz": "1"})
    assert caught.value.args[0] == "unknown option 'zzz' for backend 'memory'"


def test_a_typo_in_the_redis_url_is_refused_instead_of_connecting_to_localhost() -> None:
    pytest.importorskip("flowcraft_rq")
    with pytest.raises(ConfigError) as caught:
        registry().build("rq", {"redis_ulr": "redis://elsewhere:6379/0"})
    assert caught.value.args[0] == "unknown option 'redis_ulr' for backend 'rq'; did you mean 'redis_url'?"


def test_visibility_timeout_is_known_to_every_backend_since_the_config_always_sets_it() -> None:
    assert validate_options("memory", MEMORY, {"visibility_timeout": "4"}) == {"visibility_timeout": 4.0}


def test_validated_options_are_typed_and_unset_ones_dropped(tmp_path: Path) -> None:
    backend = registry().build("sqlite", {"path": str(tmp_path / "x.db"), "busy_timeout": "2", "read_only": ""})
    assert backend.options == {"path": tmp_path / "x.db", "busy_timeout": 2.0}
    assert backend.queue.db.busy_timeout == 2.0  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- pass-through
def test_keys_pass_unchecked_when_a_component_declares_no_schema() -> None:
    components = {**MEMORY, "context": UndeclaredContext}
    validated = validate_options("custom", components, {"anything": "as given", "visibility_timeout": "3"})
    assert validated == {"anything": "as given", "visibility_timeout": 3.0}
    # the declared keys are still checked
    with pytest.raises(ConfigError) as caught:
        validate_options("custom", components, {"visibility_timeout": "soon"})
    assert caught.value.args[0] == "option visibility_timeout: expected a number, got 'soon'"
    assert resolve_options(components, validated) == validated


def test_a_schema_that_is_not_a_dataclass_is_the_plugins_fault() -> None:
    class Broken(MemoryQueue):
        Options = dict

    with pytest.raises(Exception, match=r"Broken\.Options must be a dataclass"):
        validate_options("custom", {"queue": Broken}, {})


def test_shared_options_are_declared_once_and_listed_once() -> None:
    sqlite = registry().classes("sqlite")
    infos = {info.name: info for info in describe_options(sqlite)}
    assert sorted(infos) == ["busy_timeout", "path", "read_only", "visibility_timeout"]
    assert infos["visibility_timeout"].components == ("queue",)
    assert infos["path"].components == ("queue", "context", "status", "coordination")
    assert infos["path"].default == DEFAULT_PATH and infos["path"].type == "path"


def test_the_sqlite_path_is_made_absolute_when_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_options(SqliteOptions, {"path": "sub/x.db"}).path == tmp_path / "sub" / "x.db"
    assert parse_options(SqliteOptions, {"path": ":memory:"}).path == Path(":memory:")


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory without FLOWCRAFT_* configuration."""
    for name in list(os.environ):
        if name.startswith("FLOWCRAFT_") and not name.startswith(("FLOWCRAFT_TEST_", "FLOWCRAFT_DISABLE")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def invoke(*args: str, **env: str) -> Result:
    return CliRunner(env={"COLUMNS": "250", **env}).invoke(cli, list(args), catch_exceptions=False)


def rows(result: Result) -> dict[str, list[str]]:
    """Table rows by their first cell, split on runs of two or more spaces."""
    import re

    found: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        cells = [cell for cell in re.split(r"\s{2,}", line.strip()) if cell]
        if cells:
            found.setdefault(cells[0], cells[1:])
    return found


def test_backends_options_sqlite_lists_type_default_users_and_help(folder: Path) -> None:
    result = invoke("backends", "--options", "sqlite")
    assert result.exit_code == 0, result.output
    table = rows(result)
    assert table["path"] == ["path", DEFAULT_PATH, "all",
                             "the database file, shared by every worker process of this machine; its directory is "
                             "created"]
    assert table["busy_timeout"][:3] == ["number", "10.0", "all"]
    assert table["visibility_timeout"][:3] == ["number", "30.0", "queue"]
    assert table["read_only"][:3] == ["boolean", "False", "all"]
    assert "Options of backend 'sqlite'" in result.stdout
    assert "FLOWCRAFT_OPT_KEY=VALUE" in result.stdout


def test_backends_options_rq_lists_the_redis_options_once(folder: Path) -> None:
    pytest.importorskip("flowcraft_rq")
    result = invoke("backends", "--options", "rq")
    assert result.exit_code == 0, result.output
    table = rows(result)
    assert table["redis_url"][:3] == ["string", "redis://127.0.0.1:6379/0", "all"]
    assert table["key_prefix"][:3] == ["string", "flowcraft:", "all"]
    assert table["queue_name"][:3] == ["string (optional)", "-", "queue"]
    assert table["rq_key_prefix"][:3] == ["string (optional)", "-", "queue"]
    assert table["visibility_timeout"][:3] == ["number", "30.0", "queue"]
    # one row although every component takes it (other options' help may name it)
    assert [line.split()[0] for line in result.stdout.splitlines() if line.strip()].count("redis_url") == 1


def test_backends_options_of_an_uninstalled_backend_is_one_error(folder: Path) -> None:
    result = invoke("backends", "--options", "nope")
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith('error: backend "nope" is not installed')


def test_config_shows_every_option_with_the_sqlite_path_resolved(folder: Path) -> None:
    result = invoke("config")
    assert result.exit_code == 0, result.output
    table = rows(result)
    assert table["options.path"] == [str(folder / DEFAULT_PATH), "default"]
    assert table["options.busy_timeout"] == ["10.0", "default"]
    assert table["options.read_only"] == ["False", "default"]
    assert table["options.visibility_timeout"] == ["30.0", "lease_seconds"]
    assert not (folder / ".flowcraft").exists()


def test_config_resolves_a_relative_path_from_any_source(folder: Path) -> None:
    result = invoke("config", "-o", "path=data/runs.db", "-o", "busy_timeout=2.5")
    assert rows(result)["options.path"] == [str(folder / "data" / "runs.db"), "command line"]
    assert rows(result)["options.busy_timeout"] == ["2.5", "command line"]
    env = invoke("config", "--json", FLOWCRAFT_OPT_PATH="other.db")
    assert '"path": "' + str(folder / "other.db") + '"' in env.stdout


def test_config_shows_a_typo_as_a_warning_below_the_table(folder: Path) -> None:
    result = invoke("config", FLOWCRAFT_OPT_BUSY_TIMOUT="3")
    assert result.exit_code == 0
    assert "options.busy_timout" in rows(result)
    assert ("warning: unknown option 'busy_timout' for backend 'sqlite'; did you mean 'busy_timeout'?"
            in result.stderr)


def test_a_typo_in_the_environment_stops_a_command_with_the_suggestion(folder: Path) -> None:
    result = invoke("runs", FLOWCRAFT_OPT_BUSY_TIMOUT="3")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: unknown option 'busy_timout' for backend 'sqlite'; did you mean 'busy_timeout'?",
        "hint: `flowcraft backends --options sqlite` lists them: busy_timeout, path, read_only, visibility_timeout"]


def test_a_bad_value_on_the_command_line_is_one_error_not_a_bug(folder: Path) -> None:
    result = invoke("runs", "-o", "busy_timeout=abc")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: option busy_timeout: expected a number, got 'abc'",
        "hint: `flowcraft backends --options sqlite` lists each option with its type"]


@pytest.mark.parametrize("command", [["runs"], ["status", "some-run"]])
def test_read_only_commands_in_an_empty_folder_create_no_database(folder: Path, command: list[str]) -> None:
    result = invoke(*command)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: no flowcraft database at {folder / DEFAULT_PATH}"
    assert result.stderr.splitlines()[1].startswith("hint: run a worker or `flowcraft setup` first")
    assert list(folder.iterdir()) == []


def test_read_only_commands_read_a_database_that_exists(folder: Path) -> None:
    assert invoke("setup").exit_code == 0
    listed = invoke("runs")
    assert listed.exit_code == 0, listed.output
    assert "no runs" in listed.stdout
    missing = invoke("status", "nope")
    assert missing.exit_code == 1
    assert "no flowcraft database" not in missing.output


def test_a_file_that_is_not_a_flowcraft_database_is_not_written(folder: Path) -> None:
    (folder / "empty.db").write_bytes(b"")
    result = invoke("runs", "-o", "path=empty.db")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (f"error: {folder / 'empty.db'} is not a flowcraft database "
                                             "(schema version 0, expected 1)")
    assert (folder / "empty.db").read_bytes() == b""
