"""The worker's event loop: ``event_loop = "auto" | "asyncio" | "uvloop"`` (config, validation, the loop run)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from flowcraft.config import event_loop_factory, load_config, run_event_loop
from flowcraft.errors import ConfigError

uvloop = pytest.importorskip("uvloop")


async def loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_event_loop_from_each_layer(tmp_path: Path) -> None:
    config = load_config(env={}, cwd=tmp_path)
    assert (config.event_loop, config.source("event_loop")) == ("auto", "default")
    (tmp_path / "flowcraft.toml").write_text('event_loop = "asyncio"\n')
    assert load_config(env={}, cwd=tmp_path).event_loop == "asyncio"
    config = load_config(env={"FLOWCRAFT_EVENT_LOOP": "UVLoop"}, cwd=tmp_path)
    assert (config.event_loop, config.source("event_loop")) == ("uvloop", "env FLOWCRAFT_EVENT_LOOP")
    assert load_config({"event_loop": "auto"}, env={}, cwd=tmp_path).event_loop == "auto"
    assert ("event_loop", "asyncio", str(tmp_path / "flowcraft.toml")) in load_config(env={}, cwd=tmp_path).entries()
    assert load_config(env={}, cwd=tmp_path).redacted()["event_loop"] == "asyncio"


@pytest.mark.parametrize("value", ["trio", "", 1])
def test_an_unknown_event_loop_is_refused_naming_where(tmp_path: Path, value: object) -> None:
    (tmp_path / "flowcraft.toml").write_text(f"event_loop = {value!r}\n")
    with pytest.raises(ConfigError, match=r"flowcraft\.toml: event_loop must be one of auto, asyncio, uvloop"):
        load_config(env={}, cwd=tmp_path)


def test_the_loop_each_choice_runs_on() -> None:
    assert run_event_loop(loop_type(), "auto") is uvloop.Loop
    assert run_event_loop(loop_type(), "uvloop") is uvloop.Loop
    assert issubclass(run_event_loop(loop_type(), "asyncio"), asyncio.BaseEventLoop)
    assert not issubclass(run_event_loop(loop_type(), "asyncio"), uvloop.Loop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop_factory("auto") is asyncio.new_event_loop
    coroutine = loop_type()
    with pytest.raises(ConfigError, match=r'event_loop is "uvloop" but uvloop is not installed') as caught:
        run_event_loop(coroutine, "uvloop")
    assert caught.value.hint is not None and "flowcraft-core[uvloop]" in caught.value.hint
    assert coroutine.cr_frame is None  # closed, never run


def test_the_worker_command_runs_on_the_configured_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from flowcraft import cli

    seen: list[type] = []

    async def fake_work(*args: object, **kwargs: object) -> None:
        seen.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(cli, "_work", fake_work)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "event_loop_app.py").write_text("import flowcraft\napp = flowcraft.App(flows=[])\n")
    for env, expected in (({}, uvloop.Loop), ({"FLOWCRAFT_EVENT_LOOP": "asyncio"}, asyncio.SelectorEventLoop)):
        result = CliRunner().invoke(cli.cli, ["worker", "--app", "event_loop_app:app", "--backend", "sqlite"], env=env)
        assert result.exit_code == 0, result.output
        assert seen.pop() is expected
