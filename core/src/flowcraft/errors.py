"""Exceptions. Every message is one line saying what was wrong and what to do."""

from __future__ import annotations


class FlowcraftError(Exception):
    """Base class for every error Flowcraft raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message} ({self.hint})" if self.hint else message


class BlueprintError(FlowcraftError):
    """A blueprint is malformed or inconsistent."""


class ExpressionError(FlowcraftError):
    """A condition or transform expression is invalid or failed to evaluate."""


class NodeError(FlowcraftError):
    """A node failed for good (after its retries and fallback)."""

    def __init__(self, message: str, node_id: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.node_id = node_id


class NodeTimeoutError(FlowcraftError):
    """A node ran longer than its timeout."""


class RunNotFoundError(FlowcraftError):
    """No run with the given id exists in the backend."""


class InvalidStateError(FlowcraftError):
    """An operation does not fit the run's current state (e.g. resume of a run that is not awaiting)."""


class ConfigError(FlowcraftError):
    """Configuration is missing or wrong."""


class PluginError(FlowcraftError):
    """A plugin is missing, duplicated or broken."""


class WaitTimeoutError(FlowcraftError):
    """A run did not reach a final state within the wait timeout."""


class StoreLimitError(FlowcraftError):
    """A store refused a value for good (too large, an invalid key): redelivering the job cannot help."""
