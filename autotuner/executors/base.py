"""Executors run trials somewhere and hand back TrialResults. They never write the study."""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from autotuner.result import TrialResult
from autotuner.spec import Spec


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
