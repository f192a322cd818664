"""Executors by name. Heavy ones (ray) are imported only when asked for."""

from __future__ import annotations

from typing import Any

from autotuner.errors import UsageError
from autotuner.executors.base import Executor, TrialRequest
from autotuner.spec import Spec

__all__ = ["EXECUTORS", "Executor", "TrialRequest", "make_executor"]
EXECUTORS = ("local", "ray")


def make_executor(name: str, spec: Spec, caps: dict[str, Any], address: str | None = None) -> Executor:
    if address is not None and name != "ray":
        raise UsageError("--address applies to --executor ray")
    if name == "local":
        from autotuner.executors.local import LocalExecutor

        return LocalExecutor(spec, caps)
    if name == "ray":
        from autotuner.executors.ray_executor import RayExecutor

        return RayExecutor(spec, caps, address)
    raise UsageError(f"--executor {name!r} is not available; allowed: {', '.join(EXECUTORS)}")
