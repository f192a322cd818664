"""autotune: find the best deployment configuration of a model by measuring it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "bench", "load_spec", "run"]

if TYPE_CHECKING:
    from autotuner.api import bench, run
    from autotuner.spec.loading import load_spec


def __getattr__(name: str) -> Any:
    # Lazy: `autotune --help` and `import autotuner` stay instant.
    if name in ("run", "bench"):
        from autotuner import api

        return getattr(api, name)
    if name == "load_spec":
        from autotuner.spec.loading import load_spec

        return load_spec
    raise AttributeError(name)
