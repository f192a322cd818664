"""The runner interface: the one interface that grows. One module and one registration per runner."""

from __future__ import annotations

import resource
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from autotuner.spec.schema import Spec


@dataclass(frozen=True)
class Device:
    """What one trial holds: a set of CPU cores, and a GPU when the config needs one."""

    kind: str  # "cpu" or "cuda"
    cores: tuple[int, ...]
    cuda_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        return cls(kind=d["kind"], cores=tuple(d["cores"]), cuda_index=d.get("cuda_index"))


class Runner(ABC):
    """Executes one model one way.

    Life cycle in a worker: `check` (class level, milliseconds, no heavy imports beyond what
    `caps` already tells) -> `setup` (load, export, quantize, compile) -> `prepare(batch)` gives
    the step the harness times -> `predict` for accuracy -> `teardown`.
    """

    name: ClassVar[str]
    backends: ClassVar[tuple[str, ...]]
    knobs: ClassVar[frozenset[str]] = frozenset()
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # An external runner measures itself (run_external) instead of going through the harness.
    external: ClassVar[bool] = False

    def __init__(self, spec: Spec, config: dict[str, Any], device: Device) -> None:
        self.spec = spec
        self.config = config
        self.device = device

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        """Why this config cannot run here, or None. Must not load the model."""
        return common_check(cls, config, caps)

    @abstractmethod
    def setup(self) -> None: ...

    @abstractmethod
    def prepare(self, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        """Move a batch where the backend wants it; return a no-argument step that runs it once."""

    @abstractmethod
    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The first output for a batch, as float32 on the host."""

    def synchronize(self) -> None:
        """Wait for the device (GPU runners)."""

    def activate(self) -> None:
        """Apply process-wide settings (thread counts) before a measurement block."""

    def device_peak_memory_mb(self) -> float | None:
        """Peak device memory, or None on CPU (the worker's peak RSS is used then)."""
        return None

    def teardown(self) -> None:
        """Free what setup took."""

    def run_external(self) -> dict[str, float]:
        """The metrics of one run, for runners whose program does its own measuring."""
        raise NotImplementedError

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        """What production needs to reproduce this config (goes into the best-config YAML)."""
        return {}


def common_check(cls: type[Runner], config: dict[str, Any], caps: dict[str, Any]) -> str | None:
    precision = config.get("precision", "fp32")
    if precision not in cls.precisions:
        return (
            f"{cls.name} runner does not offer precision {precision!r} (offers {', '.join(cls.precisions)})"
        )
    threads = config.get("threads")
    cores = int(caps.get("cpu_cores", 1))
    if threads is not None and int(threads) > cores:
        return f"threads={threads} exceeds the {cores} CPU cores a trial gets here"
    if threads is not None and int(threads) < 1:
        return "threads must be at least 1"
    if int(config.get("batch_size", 1)) < 1:
        return "batch_size must be at least 1"
    if "page_size" in config:
        return f"page_size applies to LLM serving; the {cls.name} runner has no KV cache"
    return None


def host_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
