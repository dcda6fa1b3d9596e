"""Fixtures shared by the contract suite and by users' own tests."""

from __future__ import annotations

import pytest

from flowcraft.app import App


@pytest.fixture
def flowcraft_app() -> App:
    """The App with the contract suite's workflows (also loadable by worker processes)."""
    from flowcraft.testing.apps import app

    return app
