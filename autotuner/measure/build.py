"""A trial's runner: found by the config's backend, checked against the spec and this machine
(a refusal is an UnsupportedConfig), then built. The batch and workload scenarios build one; the
serving scenario one per instance, from the same checked class."""

from __future__ import annotations

from typing import Any

from autotuner.errors import UnsupportedConfig
from autotuner.runners.base import Device, Runner, backend_of
from autotuner.runners.registry import runner_for
from autotuner.spec.schema import Spec


def checked_class(spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> type[Runner]:
    """The config's runner class, once its check has passed."""

    cls = runner_for(backend_of(config))
    reason = cls.check(spec, config, caps)
    if reason:
        raise UnsupportedConfig(reason)
    return cls


def build(spec: Spec, config: dict[str, Any], device: Device, caps: dict[str, Any]) -> Runner:
    return checked_class(spec, config, caps)(spec, config, device)
