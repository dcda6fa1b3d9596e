"""The contract suite every backend must pass (fsspec-style abstract test classes) and its fixtures."""

from flowcraft.testing.contract import (
    MULTIPROCESS,
    BackendContract,
    CapabilitiesContract,
    ContextContract,
    CoordinationContract,
    CrashContract,
    InProcessWorkers,
    QueueContract,
    ReconcilerContract,
    StatusContract,
    WorkflowContract,
)

__all__ = [
    "MULTIPROCESS", "BackendContract", "CapabilitiesContract", "ContextContract", "CoordinationContract",
    "CrashContract", "InProcessWorkers", "QueueContract", "ReconcilerContract", "StatusContract", "WorkflowContract",
]
