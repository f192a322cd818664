"""autotune: find the best deployment configuration of a model by measuring it.

Packages, in the order data flows through them (each imports only the ones below it; the
contract is checked by `lint-imports`, see pyproject.toml):

    api, cli      the commands, each a few lines over the stages
    report        report data, figures, HTML, console summary, `show`, exports
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

from typing import TYPE_CHECKING, Any

from autotuner._version import __version__

__all__ = ["__version__", "bench", "load_spec", "results", "run"]

if TYPE_CHECKING:
    from autotuner.api import bench, load_spec, run
    from autotuner.report.frames import results


def __getattr__(name: str) -> Any:
    # Lazy: `autotune --help` and `import autotuner` stay instant.
    if name in ("run", "bench", "load_spec"):
        from autotuner import api

        return getattr(api, name)
    if name == "results":  # the study's results as pandas frames
        from autotuner.report.frames import results

        return results
    raise AttributeError(name)
