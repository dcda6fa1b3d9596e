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


class BlueprintValidationError(BlueprintError):
    """A blueprint failed validation at load; ``problems`` lists every problem, each with its path."""

    SHOWN = 10

    def __init__(self, blueprint: str, problems: list[str]) -> None:
        shown = "; ".join(problems[: self.SHOWN])
        more = f"; and {len(problems) - self.SHOWN} more" if len(problems) > self.SHOWN else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{blueprint} is invalid ({count}): {shown}{more}",
                         hint="fix each listed path; `flowcraft lint FILE` lists them all")
        self.problems = problems


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


class ServerUnreachableError(ConfigError):
    """A server the configuration names has not been reached by this process: down, restarting or wrongly
    named. Commands report it at once; a worker keeps trying for ``UNREACHABLE_GRACE`` seconds first."""


class PluginError(FlowcraftError):
    """A plugin is missing, duplicated or broken."""


class WaitTimeoutError(FlowcraftError):
    """A run did not reach a final state within the wait timeout."""


class StoreLimitError(FlowcraftError):
    """A store refused a value for good (too large, an invalid key): redelivering the job cannot help."""


class InvalidValueError(StoreLimitError):
    """A run input, resume output, node output or context value that no store can keep (not JSON, or a
    context key that is not a string); raised before anything is written."""


class UnsupportedError(FlowcraftError):
    """The backend cannot do what was asked (e.g. a queue that cannot remove its dead letters, a status store
    without ``delete``); the message names the component and the hint what to do instead."""
