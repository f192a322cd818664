"""autotune: find the best deployment configuration of a model by measuring it.

Packages, in the order data flows through them (each imports only the ones below it; the
contract is checked by `lint-imports`, see pyproject.toml):

    api, cli      the commands, each a few lines over the stages
    report        report data, figures, HTML, console summary, `show`, exports, `verify`
    search        space, samplers, the ask/tell driver, estimates, the race and the pick
    execution     executors, the worker process, the harness, accuracy, load, capabilities
    study         the only code that knows how results are stored in Optuna
    runners       the runner contracts, their lookup, binding a spec to them
    models        built-in models, inputs, cached artifacts (ONNX exports, references)
    spec          the validated spec (pure schema) and reading YAML

and the modules every layer may use: errors, metrics, result, files, processes, progress,
_version. Runners live in autotuner.backends and are found through entry points.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autotuner._version import __version__
from autotuner.errors import AutotuneError, SpecError, UsageError

# The public surface: the commands, reading a spec, the spec and result types, the errors. The
# stages (api.open_study, api.search, ...) are in autotuner.api; the plug-in API in autotuner.runners.
_COMMANDS = ("run", "bench", "export", "report", "verify", "quantize", "load_spec")
_TYPES = {"Spec": "autotuner.spec.schema", "TrialResult": "autotuner.result"}

__all__ = [
    "AutotuneError",
    "Spec",
    "SpecError",
    "TrialResult",
    "UsageError",
    "__version__",
    "bench",
    "export",
    "load_spec",
    "quantize",
    "report",
    "results",
    "run",
    "verify",
]

if TYPE_CHECKING:
    from autotuner.api import bench, export, load_spec, quantize, report, run, verify
    from autotuner.report.frames import results
    from autotuner.result import TrialResult
    from autotuner.spec.schema import Spec


def __getattr__(name: str) -> Any:
    # Lazy: `autotune --help` and `import autotuner` stay instant.

    if name in _COMMANDS:
        return getattr(importlib.import_module("autotuner.api"), name)
    if name == "results":  # the study's results as pandas frames
        return importlib.import_module("autotuner.report.frames").results
    if name in _TYPES:
        return getattr(importlib.import_module(_TYPES[name]), name)
    raise AttributeError(name)
