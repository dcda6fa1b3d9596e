"""``flowcraft.spi.SPI_VERSION``: a plugin declaring the version it was written for is used when it matches and
left out, with one line saying which versions, when it does not; a plugin that declares none is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flowcraft.spi import SPI_VERSION

PLUGIN = """
from flowcraft.hookspecs import hookimpl
from flowcraft.plugins import Preset
{declaration}

@hookimpl
def flowcraft_presets():
    return [Preset("{name}", "memory", "memory", "memory", "memory")]
"""

PROBE = """
import json
from flowcraft.plugins import registry

reg = registry()
print(json.dumps({"presets": sorted(reg.presets()), "left_out": [left.line() for left in reg.left_out]}))
"""


def test_a_plugin_written_for_another_spi_version_is_left_out_with_the_versions(tmp_path: Path) -> None:
    plugins = {"current": f"SPI_VERSION = {SPI_VERSION}", "future": f"SPI_VERSION = {SPI_VERSION + 1}",
               "undeclared": ""}
    for name, declaration in plugins.items():
        dist_info = tmp_path / f"flowcraft_{name}-1.0.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: flowcraft-{name}\nVersion: 1.0.0\n")
        (dist_info / "entry_points.txt").write_text(f"[flowcraft]\n{name} = spi_{name}_plugin\n")
        (tmp_path / f"spi_{name}_plugin.py").write_text(PLUGIN.format(declaration=declaration, name=name))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCRAFT_")}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert {"current", "undeclared"} <= set(found["presets"]) and "future" not in found["presets"]
    [line] = [line for line in found["left_out"] if "flowcraft-future" in line]
    assert line.startswith(
        f'plugin "future" (flowcraft-future 1.0.0) left out: it was written for SPI version {SPI_VERSION + 1} '
        f"(flowcraft-core ")
    assert f"has SPI version {SPI_VERSION}); install a release of flowcraft-future written for SPI version " \
           f"{SPI_VERSION}, or disable it" in line
    assert not [line for line in found["left_out"] if "flowcraft-current" in line or "flowcraft-undeclared" in line]
