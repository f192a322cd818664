"""What a config meets before launch that the runners know: a knob another runner holds for
itself (runners.exclusive), its runner refuses it here, or its memory model predicts it runs
out. The study's history (the same config failed before) is the search's part: `search.precheck`."""

from __future__ import annotations

from typing import Any

from autotuner.errors import UsageError
from autotuner.result import TrialResult
from autotuner.runners.exclusive import exclusive_reason
from autotuner.runners.knobs import backend_of
from autotuner.runners.registry import runner_for
from autotuner.spec.schema import Spec


def refusal(spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> TrialResult | None:
    """The failure this config meets without being launched on a machine with these capabilities
    (unsupported, or predicted-oom), or None."""
    try:
        cls = runner_for(backend_of(config))
    except UsageError as e:
        return TrialResult.failure("unsupported", str(e))
    reason = exclusive_reason(cls, config) or cls.check(spec, config, caps)
    if reason:
        return TrialResult.failure("unsupported", reason)
    memory = cls.predict_memory(spec, config, caps)
    if memory is not None and memory[0] > memory[1]:
        return TrialResult.failure(
            "predicted-oom",
            f"the memory model predicts {memory[0] / 2**20:.0f} MiB; "
            f"the device has {memory[1] / 2**20:.0f} MiB available",
            predicted_mb=memory[0] / 2**20,
            device_mb=memory[1] / 2**20,
        )
    return None
