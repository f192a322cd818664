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
    number: int
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


class Executor(ABC):
    """`slots` trials may run at once; each holds its own device (a GPU, or a set of cores)."""

    slots: int = 1

    def __init__(self, spec: Spec, caps: dict[str, Any]) -> None:
        self.spec = spec
        self.caps = caps

    @abstractmethod
    def submit(self, request: TrialRequest) -> Future[TrialResult]: ...

    @abstractmethod
    def remeasure(self, candidates: list[dict[str, Any]], rounds: int, round_time_s: float) -> dict[str, Any]:
        """Measure candidates again, interleaved, on one device; see worker.run_pick."""

    def close(self) -> None:
        """Release workers and devices."""
