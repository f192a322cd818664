"""Running one measurement block somewhere: the request/reply protocol, the executors (local,
ray, replay), the worker process and its harness, the accuracy check, the load meter and the
machine's capabilities probe. Nothing here writes the study.
"""

from autotuner.execution.base import EXECUTORS, Executor, TrialRequest, make_executor
from autotuner.execution.process import kill_all as stop_workers

__all__ = ["EXECUTORS", "Executor", "TrialRequest", "make_executor", "stop_workers"]
