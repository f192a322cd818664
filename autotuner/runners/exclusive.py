"""Knobs one runner holds for itself (`Knob.exclusive`), refused on every other runner.

This reasons across runners, so it loads them (through the registry) and sits above the base:
a runner's own `check` never needs another runner installed. The precheck (before a trial is
launched) asks `exclusive_reason` before the runner's check; `refusal` is both in that order (the
conformance suite's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotuner.runners.knobs import SHARED_KNOBS, backend_of
from autotuner.runners.registry import exclusive_owner, runner_for

if TYPE_CHECKING:
    from autotuner.runners.base import Runner
    from autotuner.spec.schema import Spec


def exclusive_reason(cls: type[Runner], config: dict[str, Any]) -> str | None:
    """Why this config names a knob another runner holds for itself, or None."""
    for name in config:
        if name in SHARED_KNOBS or name in cls.knobs:
            continue  # the common case: no other runner needs to be imported to know
        owner = exclusive_owner(name)
        if owner is not None and owner is not cls:
            why = owner.knobs[name].exclusive or ""
            return f"{name} {why.format(runner=cls.name)}"
    return None


def refusal(spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
    """Why a config cannot run here, across runners: a knob another runner holds, then its
    runner's own check. Raises UsageError for a backend no runner has."""
    cls = runner_for(backend_of(config))
    return exclusive_reason(cls, config) or cls.check(spec, config, caps)
