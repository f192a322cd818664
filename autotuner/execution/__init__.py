"""Running one measurement block somewhere, on the driver's side of the process boundary: the
request/reply protocol (`base`), the executors (local, ray, replay), starting and reaping the
worker process (`process`), the cores a trial holds and the machine's capabilities probe. What
runs inside the worker process is `autotuner.measure`. Nothing here writes the study.

The factory lives here, not in `base`, so that the contract imports none of its implementations
(Optuna's `storages.get_storage`); the implementations are imported only when asked for.
"""

from __future__ import annotations

from typing import Any

from autotuner.errors import UsageError
from autotuner.execution.base import Executor, TrialRequest
from autotuner.execution.local import LocalExecutor, start_warm_workers
from autotuner.execution.process import kill_all as stop_workers
from autotuner.execution.ray_executor import RayExecutor
from autotuner.execution.warm import WarmWorkers
from autotuner.spec.schema import Spec

__all__ = [
    "EXECUTORS",
    "Executor",
    "TrialRequest",
    "check_executor",
    "make_executor",
    "start_warm_workers",
    "stop_workers",
]

EXECUTORS = ("local", "ray")


def check_executor(name: str, address: str | None = None) -> None:
    """Refuse an executor name that is not one, or an --address without ray (a UsageError)."""
    if name not in EXECUTORS:
        raise UsageError(f"--executor {name!r} is not available; allowed: {', '.join(EXECUTORS)}")
    if address is not None and name != "ray":
        raise UsageError("--address applies to --executor ray")


def make_executor(
    name: str, spec: Spec, caps: dict[str, Any], address: str | None = None, warm: WarmWorkers | None = None
) -> Executor:
    """An executor by name. Heavy ones (ray) are imported only when asked for. `warm`: the local
    executor's warm workers, started early (`start_warm_workers`); another executor closes them."""
    check_executor(name, address)
    if name == "ray":
        if warm is not None:
            warm.close()
        return RayExecutor(spec, caps, address)

    return LocalExecutor(spec, caps, warm)
