"""Project templates shipped with flowcraft-core: ``backend/`` is what ``flowcraft new-backend`` renders.

Template files end in ``.tmpl`` and are filled in with ``string.Template`` (``$name``; a literal dollar is
``$$``); a directory named ``package`` becomes the distribution's import package.
"""

from __future__ import annotations

import importlib.metadata
import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from flowcraft.errors import ConfigError
from flowcraft.plugins import KNOWN_DISTRIBUTIONS, PRESET, registry
from flowcraft.spi import SPI_VERSION

BACKEND_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_SUFFIX = ".tmpl"
_PACKAGE_DIR = "package"


def new_backend(name: str, parent: Path) -> Path:
    """Render the backend template as the distribution ``flowcraft-NAME`` in ``parent``; return its root."""
    if not BACKEND_NAME.match(name):
        raise ConfigError(f"backend name {name!r} is not a lowercase identifier",
                          hint="use lowercase letters, digits and underscores, starting with a letter, e.g. mystore")
    plugins = registry()
    taken = KNOWN_DISTRIBUTIONS.get(name) or (name in plugins.presets() and plugins.provider(PRESET, name).provider())
    if taken:
        raise ConfigError(f"backend name {name!r} is already used by {taken}",
                          hint="choose a name saying which server the backend talks to, e.g. mystore")
    values = _values(name)
    root = parent / values["distribution"]
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root.absolute()} already exists and is not an empty directory",
                          hint="remove it, or give another directory with --dir")
    _render(files(__name__) / "backend", root, values)
    return root


def _values(name: str) -> dict[str, str]:
    try:
        version = importlib.metadata.version("flowcraft-core")
        requirement = f">={version}"
    except importlib.metadata.PackageNotFoundError:  # core run from a source tree: no version to require
        requirement = ""
    return {
        "name": name,
        "distribution": f"flowcraft-{name.replace('_', '-')}",
        "package": f"flowcraft_{name}",
        "prefix": "".join(part.capitalize() for part in name.split("_")),
        "spi_version": str(SPI_VERSION),
        "core_requirement": f"flowcraft-core{requirement}",
        "core_test_requirement": f"flowcraft-core[test]{requirement}",
    }


def _render(source: Traversable, target: Path, values: dict[str, str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            if entry.name != "__pycache__":
                _render(entry, target / (values["package"] if entry.name == _PACKAGE_DIR else entry.name), values)
        elif entry.name.endswith(_SUFFIX):
            text = Template(entry.read_text(encoding="utf-8")).substitute(values)
            (target / entry.name.removesuffix(_SUFFIX)).write_text(text, encoding="utf-8")
