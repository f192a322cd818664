"""A benchmark-only runner whose steps take a fixed time and no CPU, so a trial's length is known.

Registered for a benchmark with AUTOTUNE_RUNNERS="sleep=sleep_runner:SleepRunner" and
PYTHONPATH=benchmarks (workers inherit both).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from autotuner.runners.base import Runner
from autotuner.spec.schema import Spec

STEP_S = 0.05


class SleepRunner(Runner):
    name = "sleep"
    backends = ("sleep",)

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        return None

    def setup(self) -> None:
        self.out = None

    def prepare(self, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        return lambda: time.sleep(STEP_S)

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        first = next(iter(batch.values()))
        return np.zeros((first.shape[0], 4), dtype=np.float32)
