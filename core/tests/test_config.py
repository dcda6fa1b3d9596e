"""Configuration: each precedence layer, env rules, file errors, secret masking, connect()."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowcraft import App, ConfigError, Flow, PluginError
from flowcraft.client import Client
from flowcraft.config import MASK, connect, load_config, mask_option, mask_value, redact_text
from flowcraft.engine.worker import Worker


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory without config files and no FLOWCRAFT_* configuration in the environment."""
    import os

    for name in list(os.environ):
        if name.startswith("FLOWCRAFT_") and not name.startswith(("FLOWCRAFT_TEST_", "FLOWCRAFT_DISABLE")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------- precedence
def test_defaults(tmp_path: Path) -> None:
    config = load_config(env={}, cwd=tmp_path)
    assert (config.backend, config.app, config.components, config.options) == ("sqlite", None, {}, {})
    assert config.source("backend") == "default"
    assert config.files == []


def test_pyproject_tool_table(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.flowcraft]\nbackend = "memory"\n'
          '[tool.flowcraft.options]\nvisibility_timeout = 12\n')
    config = load_config(env={}, cwd=tmp_path)
    assert config.backend == "memory"
    assert config.options == {"visibility_timeout": 12}
    assert "[tool.flowcraft]" in config.source("options.visibility_timeout")


def test_pyproject_without_tool_table_is_ignored(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert load_config(env={}, cwd=tmp_path).files == []


def test_flowcraft_toml_beats_pyproject_key_by_key(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.flowcraft]\nbackend = "memory"\napp = "a.b:app"\n'
          '[tool.flowcraft.options]\nurl = "from-pyproject"\nprefix = "p"\n')
    toml = write(tmp_path / "flowcraft.toml", 'backend = "rq"\n[options]\nurl = "from-toml"\n'
                 '[components]\ncoordination = "redis"\n')
    config = load_config(env={}, cwd=tmp_path)
    assert config.backend == "rq"
    assert config.app == "a.b:app"  # only set in pyproject
    assert config.options == {"url": "from-toml", "prefix": "p"}
    assert config.components == {"coordination": "redis"}
    assert config.source("backend") == str(toml)
    assert config.source("app").endswith("[tool.flowcraft]")


def test_flowcraft_config_env_names_the_file(tmp_path: Path) -> None:
    write(tmp_path / "flowcraft.toml", 'backend = "ignored"\n')
    other = write(tmp_path / "other.toml", 'backend = "memory"\n')
    config = load_config(env={"FLOWCRAFT_CONFIG": str(other)}, cwd=tmp_path)
    assert config.backend == "memory"
    assert config.files == [other]


def test_explicit_path_beats_flowcraft_config_env(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'backend = "a"\n')
    write(tmp_path / "b.toml", 'backend = "b"\n')
    config = load_config(path="b.toml", env={"FLOWCRAFT_CONFIG": "a.toml"}, cwd=tmp_path)
    assert config.backend == "b"


def test_env_beats_files(tmp_path: Path) -> None:
    write(tmp_path / "flowcraft.toml", 'backend = "memory"\napp = "x.y:app"\n[options]\nredis_url = "file"\n')
    env = {
        "FLOWCRAFT_BACKEND": "rq",
        "FLOWCRAFT_REDIS_URL": "redis://env:6379/0",
        "FLOWCRAFT_OPT_POOL_SIZE": "10",
        "FLOWCRAFT_QUEUE": "sqs",
        "FLOWCRAFT_TEST_REDIS_URL": "redis://tests-only",  # the test servers' variable is not config
        "FLOWCRAFT_DISABLE_PLUGINS": "x",
        "OTHER": "1",
    }
    config = load_config(env=env, cwd=tmp_path)
    assert config.backend == "rq"
    assert config.app == "x.y:app"
    assert config.options == {"redis_url": "redis://env:6379/0", "pool_size": "10"}
    assert config.components == {"queue": "sqs"}
    assert config.source("backend") == "env FLOWCRAFT_BACKEND"
    assert config.source("options.redis_url") == "env FLOWCRAFT_REDIS_URL"
    assert config.source("options.pool_size") == "env FLOWCRAFT_OPT_POOL_SIZE"
    assert config.source("components.queue") == "env FLOWCRAFT_QUEUE"


def test_env_json_tables_lose_to_specific_variables(tmp_path: Path) -> None:
    env = {"FLOWCRAFT_COMPONENTS": '{"queue": "a", "context": "b"}', "FLOWCRAFT_QUEUE": "c",
           "FLOWCRAFT_OPTIONS": '{"x_url": "table", "y": 1}', "FLOWCRAFT_X_URL": "specific"}
    config = load_config(env=env, cwd=tmp_path)
    assert config.components == {"queue": "c", "context": "b"}
    assert config.options == {"x_url": "specific", "y": 1}
    assert config.source("components.context") == "env FLOWCRAFT_COMPONENTS"
    assert config.source("options.x_url") == "env FLOWCRAFT_X_URL"


def test_arguments_beat_env(tmp_path: Path) -> None:
    config = load_config({"backend": "memory", "options": {"redis_url": "arg"}},
                         env={"FLOWCRAFT_BACKEND": "rq", "FLOWCRAFT_REDIS_URL": "env"}, cwd=tmp_path,
                         source="command line")
    assert config.backend == "memory"
    assert config.options == {"redis_url": "arg"}
    assert config.source("backend") == "command line"


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('backend = "rq"\nbackend = "sqs"\n', "invalid TOML"),
        ('backnd = "rq"\n', "unknown key 'backnd'"),
        ("backend = 3\n", "'backend' must be a non-empty string"),
        ('app = "no_colon"\n', "must be written 'package.module:attribute'"),
        ('[components]\nqueues = "sqs"\n', "unknown component kind 'queues'"),
        ("[components]\nqueue = 1\n", "components.queue must be a component name string"),
        ('[options.redis]\nurl = "x"\n', "options.redis is a table, but options are flat"),
    ],
)
def test_bad_file_is_one_line_with_path_and_fix(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "flowcraft.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cwd=tmp_path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_bad_pyproject_table_names_the_table(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.flowcraft]\nbackend = ""\n')
    with pytest.raises(ConfigError, match=r"pyproject.toml \[tool.flowcraft\]: 'backend' must be"):
        load_config(env={}, cwd=tmp_path)


def test_missing_named_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist \(named by FLOWCRAFT_CONFIG"):
        load_config(env={"FLOWCRAFT_CONFIG": "nope.toml"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="named by --config"):
        load_config(path="nope.toml", env={}, cwd=tmp_path)


def test_bad_env_json_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FLOWCRAFT_COMPONENTS must be a JSON object"):
        load_config(env={"FLOWCRAFT_COMPONENTS": "queue=sqs"}, cwd=tmp_path)


# ---------------------------------------------------------------------------------------------- secrets
@pytest.mark.parametrize("key", ["password", "db_password", "api_token", "client_secret", "account_key",
                                 "credentials", "SECRET_KEY"])
def test_secret_keys_are_masked(key: str) -> None:
    assert mask_option(key, "hunter2") == MASK


def test_masking_keeps_ordinary_values() -> None:
    assert mask_option("visibility_timeout", 30) == 30
    assert mask_option("redis_url", "redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert mask_option("password", None) is None


def test_passwords_in_urls_and_connection_strings_are_masked() -> None:
    assert mask_value("redis://:pw@localhost:6379/0") == f"redis://:{MASK}@localhost:6379/0"
    assert mask_value("postgresql://user:s3cret@db.example.com/app") == f"postgresql://user:{MASK}@db.example.com/app"
    assert mask_value("amqp://guest:guest@[::1]:5672/") == f"amqp://guest:{MASK}@[::1]:5672/"
    azure = "DefaultEndpointsProtocol=http;AccountName=dev;AccountKey=abc==;QueueEndpoint=http://127.0.0.1:1/dev;"
    assert mask_value(azure) == azure.replace("abc==", MASK)


def test_url_password_is_masked_up_to_the_last_at_of_the_authority() -> None:
    assert mask_value("redis://:hunt@er2@h") == f"redis://:{MASK}@h"
    assert mask_value("redis://user:a@b@c@host:6379/0?x=y@z") == f"redis://user:{MASK}@host:6379/0?x=y@z"
    assert redact_text("from redis://:p@w@h/0 to http://u:q@r@s/") == f"from redis://:{MASK}@h/0 to http://u:{MASK}@s/"


def test_secrets_inside_messages_are_masked() -> None:
    message = "cannot connect to redis://:pw@h:1/0 (also amqp://u:p@q/v); AccountKey=abc;"
    expected = f"cannot connect to redis://:{MASK}@h:1/0 (also amqp://u:{MASK}@q/v); AccountKey={MASK};"
    assert redact_text(message) == expected
    assert redact_text("http://host:80/path and a:b@c") == "http://host:80/path and a:b@c"


def test_redacted_and_repr_never_show_secrets(tmp_path: Path) -> None:
    write(tmp_path / "flowcraft.toml", '[options]\npassword = "hunter2"\nurl = "redis://u:hunter2@h:1/0"\n'
          'prefix = "runs"\n')
    config = load_config(env={"FLOWCRAFT_OPT_API_TOKEN": "hunter2"}, cwd=tmp_path)
    assert config.options["password"] == "hunter2"  # the real value still reaches the backend
    redacted = config.redacted()
    assert redacted["options"] == {"password": MASK, "url": f"redis://u:{MASK}@h:1/0", "prefix": "runs",
                                   "api_token": MASK}
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config.entries())


# ---------------------------------------------------------------------------------------------- connect
def test_connect_unknown_backend_has_install_hint(clean_env: Path) -> None:
    with pytest.raises(PluginError) as info:
        connect("nosuch")
    assert str(info.value.args[0]).startswith('backend "nosuch" is not installed')
    assert info.value.hint.startswith("install the plugin that provides 'nosuch'")


def test_connect_unknown_component_has_hint(clean_env: Path) -> None:
    with pytest.raises(PluginError, match="queue 'nosuch' is not installed"):
        connect("memory", components={"queue": "nosuch"})


def test_connect_backend_from_config_file(clean_env: Path) -> None:
    write(clean_env / "flowcraft.toml", 'backend = "memory"\n')
    client = connect()
    assert isinstance(client, Client)
    assert client.backend.name == "memory"


def test_connect_arguments_become_options(clean_env: Path) -> None:
    client = connect("memory", visibility_timeout=5)
    assert client.backend.options == {"visibility_timeout": 5}


def test_connect_rejects_a_non_app(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match=r"app must be a flowcraft\.App"):
        connect("memory", app=42)  # type: ignore[arg-type]


@pytest.fixture
def app_module(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    write(clean_env / "config_test_app.py", "from flowcraft import App, Flow\n"
          "flow = Flow('double')\nflow.node('twice', lambda ctx: ctx.input * 2)\napp = App(flows=[flow])\n")
    monkeypatch.syspath_prepend(str(clean_env))
    yield "config_test_app:app"
    sys.modules.pop("config_test_app", None)


async def test_connect_loads_app_string_and_runs(app_module: str) -> None:
    client = connect("memory", app=app_module)
    worker = Worker(client.engine, poll_wait=0.05, grace=1.0)
    import asyncio

    task = asyncio.create_task(worker.run())
    try:
        result = await client.run("double", 21, timeout=10)
    finally:
        worker.stop()
        await task
        await client.close()
    assert (result.status, result.output) == ("completed", 42)


def test_connect_takes_app_from_config(app_module: str) -> None:
    write(Path.cwd() / "flowcraft.toml", f'backend = "memory"\napp = "{app_module}"\n')
    assert connect().app.blueprint("double") is not None


def test_connect_with_app_object(clean_env: Path) -> None:
    flow = Flow("f")
    flow.node("n", lambda ctx: None)
    app = App(flows=[flow])
    assert connect("memory", app=app).app is app


# ---------------------------------------------------------------------------------------------- lease_seconds
def test_lease_seconds_from_each_layer(tmp_path: Path) -> None:
    assert load_config(env={}, cwd=tmp_path).lease_seconds == 30.0
    write(tmp_path / "pyproject.toml", "[tool.flowcraft]\nlease_seconds = 12\n")
    assert load_config(env={}, cwd=tmp_path).lease_seconds == 12.0
    write(tmp_path / "flowcraft.toml", "lease_seconds = 9.5\n")
    assert load_config(env={}, cwd=tmp_path).lease_seconds == 9.5
    config = load_config(env={"FLOWCRAFT_LEASE_SECONDS": "7"}, cwd=tmp_path)
    assert (config.lease_seconds, config.source("lease_seconds")) == (7.0, "env FLOWCRAFT_LEASE_SECONDS")
    config = load_config({"lease_seconds": 3}, env={"FLOWCRAFT_LEASE_SECONDS": "7"}, cwd=tmp_path,
                         source="command line")
    assert (config.lease_seconds, config.source("lease_seconds")) == (3.0, "command line")


def test_queue_visibility_follows_the_lease(tmp_path: Path) -> None:
    config = load_config({"backend": "memory", "lease_seconds": 4}, env={}, cwd=tmp_path)
    assert config.options == {}
    assert config.build_backend().queue.visibility_timeout == 4.0


def test_visibility_timeout_alone_is_the_lease(tmp_path: Path) -> None:
    config = load_config({"options": {"visibility_timeout": "6"}}, env={}, cwd=tmp_path)
    assert (config.lease_seconds, config.source("lease_seconds")) == (6.0, "options.visibility_timeout")


def test_visibility_timeout_longer_than_the_lease_is_kept(tmp_path: Path) -> None:
    config = load_config({"backend": "memory", "lease_seconds": 5, "options": {"visibility_timeout": 60}},
                         env={}, cwd=tmp_path)
    assert config.lease_seconds == 5.0
    assert config.build_backend().queue.visibility_timeout == 60.0


def test_visibility_timeout_shorter_than_the_lease_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "flowcraft.toml", "lease_seconds = 30\n[options]\nvisibility_timeout = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, cwd=tmp_path)
    assert str(caught.value.args[0]) == (
        f"options.visibility_timeout (5s, {tmp_path / 'flowcraft.toml'}) is shorter than lease_seconds "
        f"(30s, {tmp_path / 'flowcraft.toml'}): the queue would deliver a job again while its node still runs")
    assert caught.value.hint == "drop visibility_timeout (it follows lease_seconds) or set lease_seconds to 5"


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_lease_seconds_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"^environment \(FLOWCRAFT_\*\): lease_seconds must be a positive number"):
        load_config(env={"FLOWCRAFT_LEASE_SECONDS": value}, cwd=tmp_path)


def test_lease_seconds_of_the_wrong_type_in_a_file(tmp_path: Path) -> None:
    write(tmp_path / "flowcraft.toml", 'lease_seconds = true\n')
    with pytest.raises(ConfigError, match="lease_seconds must be a positive number of seconds, got True"):
        load_config(env={}, cwd=tmp_path)
