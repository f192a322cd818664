"""The runner contracts and their lookup; the plug-in API is imported from here.

    from autotuner.runners import Knob, TimedRunner, precisions

- `knobs`: `Knob` (one declaration per knob: default, choices, kind, where it applies,
  exclusivity), the shared and serving knobs, and `refusal`, the check the base runs from the
  declarations. A leaf.
- `base`: `Device` and the two contracts: `TimedRunner` (the harness times one step it gets
  from the runner: torch, onnxruntime) and `WorkloadRunner` (the runner measures a whole
  workload itself: llm, command, vllm).
- `registry`: runners by name through the `autotune.runners` entry points, loaded lazily.
- `exclusive`: knobs one runner holds for itself, refused on the others (loads every runner).
- `gpu_libraries`: the CUDA / cuDNN / TensorRT libraries of pip wheels loaded before ONNX
  Runtime's first GPU session, and a one-node load probe of each GPU provider.
- `binding`: a spec bound to the installed runners: parameter names, backends, built-in model
  names and each runner's own settings section, with field paths in every error.

Inside the package imports point down: binding, exclusive > registry > base > knobs (a layers
contract in pyproject.toml).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotuner.runners import base, knobs

__all__ = [
    "DEVICE_RESIDENT",
    "SERVING",
    "SHARED",
    "Device",
    "Knob",
    "Runner",
    "TimedRunner",
    "WorkloadRunner",
    "host_peak_rss_mb",
    "precisions",
]

if TYPE_CHECKING:
    from autotuner.runners.base import (
        DEVICE_RESIDENT,
        Device,
        Runner,
        TimedRunner,
        WorkloadRunner,
        host_peak_rss_mb,
    )
    from autotuner.runners.knobs import SERVING, SHARED, Knob, precisions

_KNOBS = ("Knob", "SERVING", "SHARED", "precisions")


def __getattr__(name: str) -> Any:
    # Lazy: importing one submodule (runners.knobs, runners.registry) does not load the base.
    if name in _KNOBS:
        return getattr(knobs, name)
    if name in __all__:
        return getattr(base, name)
    raise AttributeError(name)
