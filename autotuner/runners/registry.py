"""Runners are found by name through the 'autotune.runners' entry point group.

The core never imports a runner module by hand; runner modules import their heavy libraries
(torch, onnxruntime) only inside methods, so loading the registry stays cheap.
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from autotuner.errors import UsageError
from autotuner.runners.knobs import SHARED_KNOBS, backend_of

if TYPE_CHECKING:
    from autotuner.runners.base import Runner

GROUP = "autotune.runners"
# Used when the package runs from a source tree without installed metadata.
_FALLBACK = {
    "torch": "autotuner.backends.torch_runner:TorchRunner",
    "onnxruntime": "autotuner.backends.onnxruntime.runner:OnnxRuntimeRunner",
    "command": "autotuner.backends.command_runner:CommandRunner",
    "llm": "autotuner.backends.llm.runner:LlmRunner",
    "vllm": "autotuner.backends.vllm.runner:VllmRunner",
}


@functools.cache
def targets() -> dict[str, str]:
    """Runner name -> "module:Class", from the entry points (and AUTOTUNE_RUNNERS). Imports nothing."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)} or dict(_FALLBACK)
    # AUTOTUNE_RUNNERS="name=module:Class,..." adds runners without packaging them (a team's
    # in-house runner, or the benchmarks' fixed-time runner). Workers inherit the variable.
    for item in filter(None, os.environ.get("AUTOTUNE_RUNNERS", "").split(",")):
        name, eq, target = item.partition("=")
        if not eq or ":" not in target:
            raise UsageError(f"AUTOTUNE_RUNNERS: {item!r} must look like name=module:Class")
        found[name.strip()] = target.strip()
    return dict(sorted(found.items()))


@functools.cache
def load(name: str) -> type[Runner]:
    """One runner class by its name, imported on first use."""
    target = targets()[name]
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"runner {name!r}: cannot load {target}: {e}") from None


def runners() -> dict[str, type[Runner]]:
    """Every runner, by name (imports each runner module; they import their libraries lazily)."""
    return {name: load(name) for name in targets()}


def all_backends() -> dict[str, str]:
    """backend value -> runner name."""
    return {b: name for name, cls in runners().items() for b in cls.backends}


def all_knobs() -> frozenset[str]:
    knobs = set(SHARED_KNOBS)
    for cls in runners().values():
        knobs |= set(cls.knobs)
    return frozenset(knobs)


def exclusive_owner(knob: str) -> type[Runner] | None:
    """The runner that holds this knob for itself, if one does."""
    return next((cls for cls in runners().values() if knob in cls.knobs and cls.knobs[knob].exclusive), None)


def needs_gpu(config: dict[str, Any]) -> bool:
    """Whether a config holds a GPU, as its runner says (an unknown backend: no)."""
    try:
        return runner_for(backend_of(config)).needs_gpu(config)
    except UsageError:
        return False


def runner_for(backend: str) -> type[Runner]:
    """The runner of a backend. Tries the runner whose name starts the backend's first (torch for
    torch-eager), so that a worker imports only the runner it runs."""
    for name in targets():
        if backend == name or backend.startswith(name + "-"):
            cls = load(name)
            if backend in cls.backends:
                return cls
    table = all_backends()
    if backend not in table:
        raise UsageError(f"backend {backend!r} is not known; allowed: {', '.join(sorted(table))}")
    return runners()[table[backend]]
