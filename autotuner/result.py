"""TrialResult: the plain, serialisable outcome of one trial, as it crosses process boundaries."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

FAILURE_CLASSES: dict[str, str] = {
    "unsupported": "the runner cannot execute this combination (checked before heavy work)",
    "predicted-oom": "the memory model says the config cannot fit, so it was not launched",
    "predicted-infeasible": "a config differing only in batch size or threads broke an accuracy constraint",
    "oom": "the device or host ran out of memory",
    "timeout": "the trial ran past measurement.trial_timeout_s and was killed",
    "crash": "the worker process died on a signal",
    "error": "the worker raised an exception",
    "invalid-metric": (
        "an objective or constraint metric is NaN, infinite or missing, or accuracy.metric failed"
    ),
    "reference-mismatch": (
        "fp32 on this backend disagrees with the fp32 reference: it ran another model than the "
        "reference was computed from; the backend is not measured again until the model changes"
    ),
    "interrupted": "the driver stopped (killed or Ctrl-C) while the trial ran; it is retried",
    "under-load": "other work loaded the trial's cores while it measured; kept, left out, measured again",
}


@dataclass
class TrialResult:
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    failure_class: str | None = None
    failure_message: str | None = None
    latency_samples_ms: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failure(cls, failure_class: str, message: str, **info: Any) -> TrialResult:
        assert failure_class in FAILURE_CLASSES, failure_class
        return cls(ok=False, failure_class=failure_class, failure_message=message, info=info)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no NaN; keep the fact that a metric was not finite as None.
        d["metrics"] = {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialResult:
        metrics = {k: (float("nan") if v is None else float(v)) for k, v in d["metrics"].items()}
        return cls(
            ok=bool(d["ok"]),
            metrics=metrics,
            failure_class=d.get("failure_class"),
            failure_message=d.get("failure_message"),
            latency_samples_ms=list(d.get("latency_samples_ms") or []),
            info=dict(d.get("info") or {}),
        )
