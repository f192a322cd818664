"""Runners are found by name through the 'autotune.runners' entry point group.

The core never imports a runner module by hand; runner modules import their heavy libraries
(torch, onnxruntime) only inside methods, so loading the registry stays cheap.
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from autotuner.errors import UsageError

if TYPE_CHECKING:
    from autotuner.runners.base import Runner

GROUP = "autotune.runners"
# Used when the package runs from a source tree without installed metadata.
_FALLBACK = {
    "torch": "autotuner.backends.torch_runner:TorchRunner",
    "onnxruntime": "autotuner.backends.onnxruntime_runner:OnnxRuntimeRunner",
    "command": "autotuner.backends.command_runner:CommandRunner",
    "llm": "autotuner.backends.llm_runner:LlmRunner",
}
SHARED_KNOBS = frozenset({"backend", "batch_size", "precision", "threads", "page_size"})


@functools.cache
def runners() -> dict[str, type[Runner]]:
    targets = {ep.name: ep.value for ep in entry_points(group=GROUP)} or dict(_FALLBACK)
    # AUTOTUNE_RUNNERS="name=module:Class,..." adds runners without packaging them (a team's
    # in-house runner, or the benchmarks' fixed-time runner). Workers inherit the variable.
    for item in filter(None, os.environ.get("AUTOTUNE_RUNNERS", "").split(",")):
        name, eq, target = item.partition("=")
        if not eq or ":" not in target:
            raise UsageError(f"AUTOTUNE_RUNNERS: {item!r} must look like name=module:Class")
        targets[name.strip()] = target.strip()
    out: dict[str, type[Runner]] = {}
    for name, target in sorted(targets.items()):
        module, _, attr = target.partition(":")
        try:
            out[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"runner {name!r}: cannot load {target}: {e}") from None
    return out


def all_backends() -> dict[str, str]:
    """backend value -> runner name."""
    return {b: name for name, cls in runners().items() for b in cls.backends}


def all_knobs() -> frozenset[str]:
    knobs = set(SHARED_KNOBS)
    for cls in runners().values():
        knobs |= cls.knobs
    return frozenset(knobs)


def runner_for(backend: str) -> type[Runner]:
    table = all_backends()
    if backend not in table:
        raise UsageError(f"backend {backend!r} is not known; allowed: {', '.join(sorted(table))}")
    return runners()[table[backend]]
