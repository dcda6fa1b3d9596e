"""Flowcraft for Python: workflows that run in one process or across a fleet of workers."""

from flowcraft.app import App, load_app
from flowcraft.client import Client
from flowcraft.config import Config, connect, load_config
from flowcraft.engine.core import Engine, EngineOptions, RunResult
from flowcraft.engine.events import Event, EventBus, Middleware
from flowcraft.engine.worker import Worker
from flowcraft.errors import (
    BlueprintError,
    ConfigError,
    ExpressionError,
    FlowcraftError,
    InvalidStateError,
    NodeTimeoutError,
    PluginError,
    RunNotFoundError,
    WaitTimeoutError,
)
from flowcraft.flow import Flow
from flowcraft.lint import LintIssue, lint_blueprint
from flowcraft.model import Blueprint, EdgeDefinition, NodeConfig, NodeDefinition
from flowcraft.nodes.base import BaseNode, NodeContext, NodeResult
from flowcraft.runtime import FlowRuntime

__version__ = "0.1.0"

__all__ = [
    "App", "BaseNode", "Blueprint", "BlueprintError", "Client", "Config", "ConfigError", "EdgeDefinition", "Engine",
    "EngineOptions", "Event", "EventBus", "ExpressionError", "Flow", "FlowRuntime", "FlowcraftError",
    "InvalidStateError", "LintIssue", "Middleware", "NodeConfig", "NodeContext", "NodeDefinition", "NodeResult",
    "NodeTimeoutError", "PluginError", "RunNotFoundError", "RunResult", "WaitTimeoutError", "Worker",
    "connect", "lint_blueprint", "load_app", "load_config",
]
