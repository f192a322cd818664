"""Executors run trials somewhere and hand back TrialResults. They never write the study."""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from autotuner.errors import UsageError
from autotuner.result import TrialResult
from autotuner.runners.base import backend_of
from autotuner.runners.registry import runner_for
from autotuner.spec.schema import Spec


@dataclass
class TrialRequest:
    """One measurement block of a config. meta["block_s"] set: a race block of that many seconds
    (no accuracy check); unset: a search trial measured with the spec's settings. fidelity
    "short": a short first look (a few batches, a fraction of min_time_s); None: full length."""

    number: int
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    fidelity: str | None = None

    @property
    def block_s(self) -> float | None:
        v = self.meta.get("block_s")
        return float(v) if v is not None else None


class Executor(ABC):
    """`slots` trials may run at once; each holds its own device (its GPUs, or a set of cores)."""

    slots: int = 1
    # Whose capabilities the runners' checks read, when not the driver's (a Ray GPU node's).
    caps_note: str | None = None
    # Where trials run, when it is worth saying (the Ray cluster joined and what it holds).
    cluster_note: str | None = None

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


GPUS_VAR = "CUDA_VISIBLE_DEVICES"


def trial_gpus(spec: Spec, config: dict[str, Any]) -> int:
    """The GPUs a config holds, as its runner says (`Runner.gpus`; an unknown backend: none)."""

    try:
        return int(runner_for(backend_of(config)).gpus(spec, config))
    except UsageError:
        return 0


@contextlib.contextmanager
def visible_gpus(ids: Sequence[int | str] | None) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES set to `ids` for the worker processes started inside (the worker
    copies this process's environment); None leaves it as it is. Restored on the way out."""
    if ids is None:
        yield
        return
    before = os.environ.get(GPUS_VAR)
    os.environ[GPUS_VAR] = ",".join(str(i) for i in ids)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(GPUS_VAR, None)
        else:
            os.environ[GPUS_VAR] = before
