"""Repository-wide pytest setup: the real-server fixtures of tests-integration/servers are available to every
test directory, so the whole suite runs in one pytest session."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests-integration"))

pytest_plugins = ["servers.pytest_plugin"]
