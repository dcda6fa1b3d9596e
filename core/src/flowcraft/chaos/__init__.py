"""Chaos harness: prove a backend keeps the engine's promises while its workers are SIGKILLed.

``python -m flowcraft.chaos --backend NAME --runs N --seconds S --workers W`` starts W ``flowcraft worker``
processes on the backend, submits N runs of workflows that use every primitive, SIGKILLs a random worker
every ``--kill-min``..``--kill-max`` seconds for S seconds (and starts it again), runs ``flowcraft reconcile
--watch``, resumes the waiting runs, cancels the cancel-runs, optionally restarts the server, then checks
every run independently of the engine's bookkeeping and prints
``BACKEND: N runs, K kills, L lost, S stuck, W wrong, D duplicate executions, T s``.
"""

from flowcraft.chaos.harness import ChaosError, ChaosOptions, ChaosReport, run_chaos
from flowcraft.chaos.verify import Execution, Finding, ObservedRun, PlannedRun, expect, verify_run

__all__ = ["ChaosError", "ChaosOptions", "ChaosReport", "Execution", "Finding", "ObservedRun", "PlannedRun",
           "expect", "run_chaos", "verify_run"]
