"""Plugins: hooks are documented and exercised, third-party backends are found by name, and a plugin that
clashes, cannot be imported or raises is left out and reported while everything else keeps working."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from flowcraft import hookspecs
from flowcraft.errors import PluginError
from flowcraft.plugins import PluginRegistry, registry
from flowcraft.spi import Backend

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("flowcraft_")]


def test_every_hook_has_a_one_line_docstring_and_is_documented() -> None:
    docs = (ROOT / "docs" / "CONTRIBUTING-BACKENDS.md").read_text() + (ROOT / "README.md").read_text()
    assert HOOKS == ["flowcraft_context_stores", "flowcraft_coordination_stores", "flowcraft_event",
                     "flowcraft_node_kinds", "flowcraft_presets", "flowcraft_queues", "flowcraft_status_stores"]
    for name in HOOKS:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert doc and "\n" not in doc.strip(), name
        assert name in docs, f"{name} is not documented in docs/CONTRIBUTING-BACKENDS.md"


def test_every_hook_is_implemented_by_the_builtins() -> None:
    plugins = PluginRegistry(load_entry_points=False)
    for name in [hook for hook in HOOKS if hook != "flowcraft_event"]:  # events: for plugins that observe
        implementations = getattr(plugins.manager.hook, name).get_hookimpls()
        assert any(plugins.manager.get_name(i.plugin) == "flowcraft-builtin" for i in implementations), name
    assert {"memory", "sqlite"} <= set(plugins.presets())
    for kind in ("queue", "context", "status", "coordination"):
        assert {"memory", "sqlite"} <= set(plugins.names(kind))


def test_builtin_backends_build_by_name(tmp_path: Path) -> None:
    backend = registry().build("sqlite", {"path": str(tmp_path / "db.sqlite")})
    assert isinstance(backend, Backend) and backend.name == "sqlite"
    mixed = registry().build("memory", {}, overrides={"context": "memory"})
    assert mixed.context.name == "memory"


def test_missing_backend_gives_an_install_hint() -> None:
    with pytest.raises(PluginError, match="pip install flowcraft-azure"):  # as if flowcraft-azure were not installed
        PluginRegistry(load_entry_points=False).preset("azure")
    with pytest.raises(PluginError, match="queue 'nope' is not installed"):
        registry().build("memory", {}, overrides={"queue": "nope"})


THIRD_PARTY = {
    "pyproject.toml": """
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"
        [project]
        name = "flowcraft-toy"
        version = "0.0.1"
        [project.entry-points.flowcraft]
        toy = "flowcraft_toy.plugin"
        [tool.hatch.build.targets.wheel]
        packages = ["flowcraft_toy"]
    """,
    "flowcraft_toy/__init__.py": "",
    "flowcraft_toy/plugin.py": """
        from flowcraft.hookspecs import hookimpl
        from flowcraft.plugins import Preset

        @hookimpl
        def flowcraft_queues():
            return [("toy", "flowcraft_toy.heavy:ToyQueue")]

        @hookimpl
        def flowcraft_presets():
            return [Preset("toy", "toy", "memory", "memory", "memory", "a third-party backend")]
    """,
    "flowcraft_toy/heavy.py": """
        import os
        if os.environ.get("TOY_FORBID_IMPORT"):
            raise RuntimeError("listing plugins imported the heavy module")
        from flowcraft.backends.memory import MemoryQueue

        class ToyQueue(MemoryQueue):
            name = "toy"
    """,
}

PROBE = """
import json, os
from flowcraft.plugins import registry
presets = sorted(registry().presets())
os.environ.pop("TOY_FORBID_IMPORT", None)
backend = registry().build("toy", {}) if "toy" in presets else None
print(json.dumps({"presets": presets, "queue": type(backend.queue).__name__ if backend else None}))
"""


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("toy-src")
    for name, text in THIRD_PARTY.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(textwrap.dedent(text))
    site = tmp_path_factory.mktemp("toy-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, timeout=300)
    return site


def probe(site: Path, **env: str) -> dict[str, Any]:
    import os

    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "PYTHONPATH": str(site), **env})
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_third_party_distribution_is_found_by_name_and_loaded_lazily(toy_site: Path) -> None:
    found = probe(toy_site, TOY_FORBID_IMPORT="1")
    assert "toy" in found["presets"]
    assert found["queue"] == "ToyQueue"


def test_plugins_can_be_disabled_by_name(toy_site: Path) -> None:
    found = probe(toy_site, FLOWCRAFT_PLUGINS_DISABLE="toy")
    assert "toy" not in found["presets"] and found["queue"] is None
    found = probe(toy_site, FLOWCRAFT_DISABLE_PLUGINS="flowcraft-toy")  # the older spelling still works
    assert "toy" not in found["presets"] and found["queue"] is None


# ---------------------------------------------------------------------------------------------- failing plugins
# Throwaway distributions on sys.path: a *.dist-info with METADATA and entry_points.txt next to the module, so
# importlib.metadata finds real entry points, exactly as for an installed wheel.
GOOD = """
    from flowcraft.hookspecs import hookimpl
    from flowcraft.plugins import Preset

    @hookimpl
    def flowcraft_queues():
        return [("good", "flowcraft_good_queue:GoodQueue")]

    @hookimpl
    def flowcraft_presets():
        return [Preset("good", "good", "memory", "memory", "memory", "a plugin that works")]
"""
GOOD_QUEUE = """
    from flowcraft.backends.memory import MemoryQueue

    class GoodQueue(MemoryQueue):
        name = "good"
"""
CLASHES_WITH_BUILTIN = """
    from flowcraft.hookspecs import hookimpl
    from flowcraft.plugins import Preset

    @hookimpl
    def flowcraft_queues():
        return [("sqlite", "flowcraft_clashy_plugin:NeverImported")]

    @hookimpl
    def flowcraft_presets():
        return [Preset("clashy", "sqlite", "memory", "memory", "memory")]
"""
CLAIMS_SHARED = """
    from flowcraft.hookspecs import hookimpl
    from flowcraft.plugins import Preset

    @hookimpl
    def flowcraft_presets():
        return [Preset("shared", "memory", "memory", "memory", "memory"),
                Preset("{own}", "memory", "memory", "memory", "memory")]
"""
BROKEN = "import flowcraft_missing_dependency\n"
RAISING = """
    from flowcraft.hookspecs import hookimpl

    @hookimpl
    def flowcraft_presets():
        raise RuntimeError("the plugin's own bug")
"""
MISREGISTERING = """
    from flowcraft.hookspecs import hookimpl

    class NotAQueue:
        name = "misfit"

    @hookimpl
    def flowcraft_queues():
        return [NotAQueue]
"""
#: distribution -> (version, entry-point name, {module: source})
FAILING_SITE = {
    "flowcraft-good": ("0.3.0", "good", {"flowcraft_good_plugin": GOOD, "flowcraft_good_queue": GOOD_QUEUE}),
    "flowcraft-clashy": ("1.0.0", "clashy", {"flowcraft_clashy_plugin": CLASHES_WITH_BUILTIN}),
    "flowcraft-one": ("2.0.0", "one", {"flowcraft_one_plugin": CLAIMS_SHARED.replace("{own}", "one")}),
    "flowcraft-two": ("2.1.0", "two", {"flowcraft_two_plugin": CLAIMS_SHARED.replace("{own}", "two")}),
    "flowcraft-broken": ("0.0.1", "broken", {"flowcraft_broken_plugin": BROKEN}),
    "flowcraft-raising": ("0.5.0", "raising", {"flowcraft_raising_plugin": RAISING}),
    "flowcraft-misfit": ("0.2.0", "misfit", {"flowcraft_misfit_plugin": MISREGISTERING}),
}


def _disable_how(distribution: str) -> str:
    return f'[plugins] disable = ["{distribution}"] in flowcraft.toml or FLOWCRAFT_PLUGINS_DISABLE={distribution}'


LEFT_OUT = {
    "clashy": 'plugin "clashy" (flowcraft-clashy 1.0.0) left out: its queue \'sqlite\' clashes with the built-in '
              f"one; uninstall flowcraft-clashy or disable it ({_disable_how('flowcraft-clashy')})",
    "one": 'plugin "one" (flowcraft-one 2.0.0) left out: its backend "shared" is also registered by plugin "two" '
           "(flowcraft-two 2.1.0); uninstall or disable one of flowcraft-one, flowcraft-two to keep the other",
    "two": 'plugin "two" (flowcraft-two 2.1.0) left out: its backend "shared" is also registered by plugin "one" '
           "(flowcraft-one 2.0.0); uninstall or disable one of flowcraft-two, flowcraft-one to keep the other",
    "broken": 'plugin "broken" (flowcraft-broken 0.0.1) left out: importing flowcraft_broken_plugin failed: '
              "ModuleNotFoundError: No module named 'flowcraft_missing_dependency'; reinstall flowcraft-broken or "
              f"disable it ({_disable_how('flowcraft-broken')})",
    "raising": 'plugin "raising" (flowcraft-raising 0.5.0) left out: hook flowcraft_presets raised RuntimeError: '
               "the plugin's own bug; report it to the authors of flowcraft-raising or disable it "
               f"({_disable_how('flowcraft-raising')})",
    "misfit": 'plugin "misfit" (flowcraft-misfit 0.2.0) left out: hook flowcraft_queues returned class NotAQueue, '
              "not a subclass of flowcraft.spi.Queue; report it to the authors of flowcraft-misfit or disable it "
              f"({_disable_how('flowcraft-misfit')})",
}

FAILING_PROBE = """
import json, sys
from flowcraft.config import load_config
from flowcraft.errors import PluginError
from flowcraft.plugins import registry

config = load_config()
reg = registry(config.plugins_disable)

def select(name):
    try:
        backend = reg.build(name, {})
    except PluginError as exc:
        return f"{exc.args[0]} | hint: {exc.hint}"
    return type(backend.queue).__name__

print(json.dumps({"presets": sorted(reg.presets()), "left_out": sorted(left.line() for left in reg.left_out),
                  "queue sqlite": reg.provider("queue", "sqlite").provider(),
                  "imported": sorted(m for m in sys.modules if m.startswith("flowcraft_") and m.endswith("_plugin")),
                  "select": {name: select(name) for name in sys.argv[1:]}}))
"""


@pytest.fixture(scope="module")
def failing_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("failing-site")
    for distribution, (version, entry_point, modules) in FAILING_SITE.items():
        dist_info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        plugin_module = next(name for name in modules if name.endswith("_plugin"))
        (dist_info / "entry_points.txt").write_text(f"[flowcraft]\n{entry_point} = {plugin_module}\n")
        for module, text in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(text))
    return site


def run_in(site: Path, cwd: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCRAFT_") or k.startswith("FLOWCRAFT_TEST")}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**clean, "PYTHONPATH": str(site), "COLUMNS": "200", **env})


def probe_failing(site: Path, cwd: Path, *select: str, **env: str) -> dict[str, Any]:
    done = run_in(site, cwd, [sys.executable, "-c", FAILING_PROBE, *select], **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_clashing_broken_and_raising_plugins_are_left_out_and_the_rest_works(failing_site: Path,
                                                                             tmp_path: Path) -> None:
    found = probe_failing(failing_site, tmp_path, "good", "sqlite", "memory", "clashy", "shared", "one", "broken",
                          "raising")
    assert found["left_out"] == sorted(LEFT_OUT.values())
    assert {"good", "sqlite", "memory"} <= set(found["presets"])
    assert not {"clashy", "shared", "one", "two", "broken", "raising"} & set(found["presets"])
    assert found["queue sqlite"] == "flowcraft-core 0.1.0 (built-in)"  # the built-in wins the clash
    selected = found["select"]
    assert selected["good"] == "GoodQueue"
    assert selected["sqlite"] == "SqliteQueue" and selected["memory"] == "MemoryQueue"
    for name in ("clashy", "one", "broken", "raising"):
        assert selected[name] == f'backend "{name}" is not available: {LEFT_OUT[name].replace("; ", " | hint: ", 1)}'
    assert selected["shared"].startswith('backend "shared" is not available: plugin "one" (flowcraft-one 2.0.0)')


def test_plugins_disabled_by_config_are_not_imported_and_say_so(failing_site: Path, tmp_path: Path) -> None:
    config = tmp_path / "flowcraft.toml"
    config.write_text('[plugins]\ndisable = ["flowcraft-broken", "good"]\n')
    found = probe_failing(failing_site, tmp_path, "good", "broken", "sqlite")
    where = f"config {config} [plugins] disable"
    assert f"plugin \"broken\" (flowcraft-broken 0.0.1) disabled (by {where}: 'flowcraft-broken')" in found["left_out"]
    assert f"plugin \"good\" (flowcraft-good 0.3.0) disabled (by {where}: 'good')" in found["left_out"]
    assert "flowcraft_broken_plugin" not in found["imported"] and "flowcraft_good_plugin" not in found["imported"]
    assert found["select"]["good"] == (
        f"backend \"good\" is disabled (by {where}: 'good'; it comes from plugin \"good\" (flowcraft-good 0.3.0)) "
        "| hint: remove that name from there to use it, or select another backend")
    assert found["select"]["broken"].startswith(f"backend \"broken\" is disabled (by {where}: 'flowcraft-broken';")
    assert found["select"]["sqlite"] == "SqliteQueue"


def test_plugins_disabled_by_env_say_so(failing_site: Path, tmp_path: Path) -> None:
    found = probe_failing(failing_site, tmp_path, "good", "raising",
                          FLOWCRAFT_PLUGINS_DISABLE="flowcraft_Good, raising")  # names compare like pip's
    assert "plugin \"good\" (flowcraft-good 0.3.0) disabled (by env FLOWCRAFT_PLUGINS_DISABLE: 'flowcraft_Good')" \
        in found["left_out"]
    assert "plugin \"raising\" (flowcraft-raising 0.5.0) disabled (by env FLOWCRAFT_PLUGINS_DISABLE: 'raising')" \
        in found["left_out"]
    assert found["select"]["good"].startswith(
        "backend \"good\" is disabled (by env FLOWCRAFT_PLUGINS_DISABLE: 'flowcraft_Good'; it comes from")
    assert found["select"]["raising"].startswith("backend \"raising\" is disabled (by env")


def test_flowcraft_backends_reports_left_out_plugins_and_providers(failing_site: Path, tmp_path: Path) -> None:
    flowcraft = str(Path(sys.executable).parent / "flowcraft")
    done = run_in(failing_site, tmp_path, [flowcraft, "backends"],
                  FLOWCRAFT_PLUGINS_DISABLE="flowcraft-two,flowcraft-tow")
    assert done.returncode == 0, done.stderr
    assert "provided by flowcraft-good 0.3.0 (plugin good)" in done.stdout
    assert "provided by flowcraft-core 0.1.0 (built-in)" in done.stdout
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert "Plugins left out" in lines
    assert "plugin \"two\" (flowcraft-two 2.1.0) disabled (by env FLOWCRAFT_PLUGINS_DISABLE: 'flowcraft-two')" in lines
    for name in ("clashy", "broken", "raising"):
        assert LEFT_OUT[name] in lines
        assert LEFT_OUT[name] in done.stderr  # warned once, as a log line
    assert ("'flowcraft-tow' (env FLOWCRAFT_PLUGINS_DISABLE) names no installed plugin; built-ins cannot be "
            "disabled") in lines
    assert not any(line.startswith('plugin "one"') for line in lines)  # with "two" disabled, "one" clashes no more
    assert "shared" in done.stdout


def test_commands_on_other_backends_keep_working_and_a_left_out_one_is_one_error(failing_site: Path,
                                                                                  tmp_path: Path) -> None:
    flowcraft = str(Path(sys.executable).parent / "flowcraft")
    works = run_in(failing_site, tmp_path, [flowcraft, "runs", "--backend", "good"])
    assert works.returncode == 0 and works.stdout.strip() == "no runs", works.stderr
    refused = run_in(failing_site, tmp_path, [flowcraft, "runs", "--backend", "raising"])
    assert refused.returncode == 1
    message, hint = LEFT_OUT["raising"].split("; ", 1)
    errors = [line for line in refused.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert errors == [f'error: backend "raising" is not available: {message}', f"hint: {hint}"]
    disabled = run_in(failing_site, tmp_path, [flowcraft, "runs", "--backend", "good"],
                      FLOWCRAFT_PLUGINS_DISABLE="good")
    assert disabled.returncode == 1
    assert ("error: backend \"good\" is disabled (by env FLOWCRAFT_PLUGINS_DISABLE: 'good'; it comes from plugin "
            '"good" (flowcraft-good 0.3.0))') in disabled.stderr.splitlines()


def test_plugins_disable_adds_up_across_config_layers_and_bad_shapes_are_one_line(tmp_path: Path) -> None:
    from flowcraft.config import load_config
    from flowcraft.errors import ConfigError

    (tmp_path / "pyproject.toml").write_text('[tool.flowcraft.plugins]\ndisable = ["flowcraft-one"]\n')
    (tmp_path / "flowcraft.toml").write_text('[plugins]\ndisable = ["two"]\n')
    config = load_config(env={"FLOWCRAFT_PLUGINS_DISABLE": "three,"}, cwd=tmp_path)
    assert config.plugins_disable == {
        "flowcraft-one": f"config {tmp_path / 'pyproject.toml'} [tool.flowcraft.plugins] disable",
        "two": f"config {tmp_path / 'flowcraft.toml'} [plugins] disable",
        "three": "env FLOWCRAFT_PLUGINS_DISABLE",
    }
    assert config.redacted()["plugins"] == {"disable": ["flowcraft-one", "three", "two"]}
    (tmp_path / "flowcraft.toml").write_text('[plugins]\ndisable = "two"\n')
    with pytest.raises(ConfigError, match=r"plugins.disable must be a list of plugin or distribution names, got 'two'"):
        load_config(env={}, cwd=tmp_path)
    (tmp_path / "flowcraft.toml").write_text('[plugins]\nenable = ["two"]\n')
    with pytest.raises(ConfigError, match=r"flowcraft.toml: unknown key plugins.enable"):
        load_config(env={}, cwd=tmp_path)
