"""The spec's `serving` section: the load of the serving scenario (`scenario: serving`).

Open loop at `rate_rps` (Poisson arrivals, seeded) or from a `trace` file, or closed loop with
`concurrency` clients; each run ends at `duration_s` or after `requests` arrivals. `max_rate`
bisects the arrival rate inside the trial for the highest one that meets `slo_p95_ms`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autotuner.spec.fields import FieldError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaxRateSpec(_Section):
    """The rates the bisection searches (geometric midpoints), and how long each probe runs."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)
    steps: int = Field(default=4, ge=1, le=20)
    duration_s: float = Field(default=1.5, gt=0, le=600)

    @model_validator(mode="after")
    def _order(self) -> MaxRateSpec:
        if self.low >= self.high:
            raise FieldError("low", f"{self.low:g} must be below high ({self.high:g})")
        return self


class ServingSpec(_Section):
    rate_rps: float | None = Field(default=None, gt=0)
    trace: str | None = None
    concurrency: int | None = Field(default=None, ge=1, le=4096)
    duration_s: float = Field(default=5.0, gt=0, le=3600)
    requests: int = Field(default=10_000, ge=1, le=10_000_000)
    slo_p95_ms: float | None = Field(default=None, gt=0)
    queue_limit: int = Field(default=1024, ge=1, le=1_000_000)
    max_rate: MaxRateSpec | None = None
    warmup_s: float = Field(default=0.2, ge=0, le=60)  # requests before this are left out of every metric

    @model_validator(mode="after")
    def _load(self) -> ServingSpec:
        loads = [k for k in ("rate_rps", "trace", "concurrency") if getattr(self, k) is not None]
        if len(loads) > 1:
            raise FieldError(
                loads[1], f"give one load: rate_rps, trace or concurrency (got {', '.join(loads)})"
            )
        if self.slo_p95_ms is not None and not loads and self.max_rate is None:
            raise FieldError(
                "slo_p95_ms",
                "needs a load to be measured at: give rate_rps, trace or concurrency, "
                "or max_rate to search the rate",
            )
        if not loads and self.max_rate is None:
            raise ValueError("give the load: rate_rps, trace or concurrency (or max_rate with slo_p95_ms)")
        if self.max_rate is not None and self.slo_p95_ms is None:
            raise FieldError("max_rate", "searches the highest rate that meets slo_p95_ms; give slo_p95_ms")
        return self
