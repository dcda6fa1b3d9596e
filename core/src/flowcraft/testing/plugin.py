"""pytest plugin (entry point ``pytest11``): makes ``flowcraft.testing`` fixtures available everywhere."""

from __future__ import annotations

from flowcraft.testing.fixtures import flowcraft_app  # noqa: F401  # re-exported as a fixture
