"""Plugins: hooks are documented and exercised, third-party backends are found by name, names are unique."""

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
from flowcraft.plugins import PluginRegistry, Preset, registry
from flowcraft.spi import Backend

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("flowcraft_")]


def test_every_hook_has_a_one_line_docstring_and_is_documented() -> None:
    docs = (ROOT / "docs" / "CONTRIBUTING-BACKENDS.md").read_text() + (ROOT / "README.md").read_text()
    assert HOOKS == ["flowcraft_context_stores", "flowcraft_coordination_stores", "flowcraft_presets",
                     "flowcraft_queues", "flowcraft_status_stores"]
    for name in HOOKS:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert doc and "\n" not in doc.strip(), name
        assert name in docs, f"{name} is not documented in docs/CONTRIBUTING-BACKENDS.md"


def test_every_hook_is_implemented_by_the_builtins() -> None:
    plugins = PluginRegistry(load_entry_points=False)
    for name in HOOKS:
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
    with pytest.raises(PluginError, match="pip install flowcraft-azure"):
        registry().preset("azure")
    with pytest.raises(PluginError, match="queue 'nope' is not installed"):
        registry().build("memory", {}, overrides={"queue": "nope"})


def test_duplicate_names_fail_loudly() -> None:
    class Duplicate:
        from flowcraft.hookspecs import hookimpl

        @staticmethod
        @hookimpl
        def flowcraft_presets() -> list[Any]:
            return [Preset("memory", "memory", "memory", "memory", "memory")]

    plugins = PluginRegistry(load_entry_points=False)
    plugins.manager.register(Duplicate, name="duplicate")
    with pytest.raises(PluginError, match="'memory' is registered by both 'flowcraft-builtin' and 'duplicate'"):
        plugins._collect()


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
    found = probe(toy_site, FLOWCRAFT_DISABLE_PLUGINS="toy")
    assert "toy" not in found["presets"] and found["queue"] is None
