"""Executors run trials somewhere and hand back TrialResults. They never write the study."""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from autotuner.errors import UsageError
from autotuner.result import TrialResult
from autotuner.spec.schema import Spec


@dataclass
class TrialRequest:
    """One measurement block of a config. meta["block_s"] set: a race block of that many seconds
    (no accuracy check); unset: a search trial measured with the spec's settings."""

    number: int
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def block_s(self) -> float | None:
        v = self.meta.get("block_s")
        return float(v) if v is not None else None


class Executor(ABC):
    """`slots` trials may run at once; each holds its own device (a GPU, or a set of cores)."""

    slots: int = 1

    def __init__(self, spec: Spec, caps: dict[str, Any]) -> None:
        self.spec = spec
        self.caps = caps

    @abstractmethod
    def submit(self, request: TrialRequest) -> Future[TrialResult]: ...

    def close(self) -> None:
        """Release workers and devices."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS = ("local", "ray")


def make_executor(name: str, spec: Spec, caps: dict[str, Any], address: str | None = None) -> Executor:
    """An executor by name. Heavy ones (ray) are imported only when asked for."""
    if address is not None and name != "ray":
        raise UsageError("--address applies to --executor ray")
    if name == "local":
        from autotuner.execution.local import LocalExecutor

        return LocalExecutor(spec, caps)
    if name == "ray":
        from autotuner.execution.ray_executor import RayExecutor

        return RayExecutor(spec, caps, address)
    raise UsageError(f"--executor {name!r} is not available; allowed: {', '.join(EXECUTORS)}")
