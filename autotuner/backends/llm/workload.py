"""LLM serving workloads: request prompts, output lengths and arrival times, drawn from a seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from autotuner.errors import UsageError
from autotuner.spec.schema import FieldError, Spec
from autotuner.spec.trace import TraceError, read_trace


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LengthDist(_Section):
    """Token lengths of a workload: fixed, uniform or lognormal (clipped to [low, high])."""

    dist: Literal["fixed", "uniform", "lognormal"] = "fixed"
    value: int | None = Field(default=None, ge=1)
    low: int | None = Field(default=None, ge=1)
    high: int | None = Field(default=None, ge=1)
    median: float | None = Field(default=None, gt=0)
    sigma: float | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return (
            {"dist": "fixed", "value": data} if isinstance(data, int) and not isinstance(data, bool) else data
        )

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        need = {"fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("median", "sigma")}[self.dist]
        for k in need:
            if getattr(self, k) is None:
                raise FieldError(k, f"required for a {self.dist} length")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise FieldError("low", f"low ({self.low}) exceeds high ({self.high})")
        return self


class WorkloadSpec(_Section):
    """The spec's `workload` section (the llm runner's): N requests, offline (all queued at once)
    or arriving at a Poisson rate, or read from a trace file; optional SLOs for goodput."""

    requests: int = Field(default=16, ge=1, le=100_000)
    prompt_len: LengthDist = Field(default_factory=lambda: LengthDist(dist="uniform", low=16, high=128))
    output_len: LengthDist = Field(default_factory=lambda: LengthDist(value=32))
    rate_rps: float | None = Field(default=None, gt=0)
    trace: str | None = None
    slo_ttft_ms: float | None = Field(default=None, gt=0)
    slo_tpot_ms: float | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    output_len: int
    arrival_s: float


def draw(d: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    if d.dist == "fixed":
        return np.full(n, int(d.value or 1))
    if d.dist == "uniform":
        return rng.integers(int(d.low or 1), int(d.high or 1) + 1, size=n)
    x = rng.lognormal(np.log(float(d.median or 1)), float(d.sigma or 1), size=n)
    return np.clip(np.rint(x), d.low or 1, d.high or 10**6).astype(int)


def requests(spec: Spec, w: WorkloadSpec, vocab: int) -> list[Request]:
    rng = np.random.default_rng([spec.data_seed, 7])
    if w.trace:
        rows = _trace(spec.resolve(w.trace))
        prompt_lens = np.array([r["prompt_len"] for r in rows])
        output_lens = np.array([r["output_len"] for r in rows])
        arrivals = np.array([float(r.get("arrival_s", 0.0)) for r in rows])
    else:
        prompt_lens = draw(w.prompt_len, w.requests, rng)
        output_lens = draw(w.output_len, w.requests, rng)
        gaps = rng.exponential(1.0 / w.rate_rps, size=w.requests) if w.rate_rps else np.zeros(w.requests)
        arrivals = np.cumsum(gaps) - (gaps[0] if len(gaps) else 0.0)
    return [
        Request(prompt=rng.integers(1, vocab, size=int(p)).tolist(), output_len=int(o), arrival_s=float(a))
        for p, o, a in zip(prompt_lens, output_lens, arrivals, strict=True)
    ]


def _trace(path: Path) -> list[dict]:
    try:
        return read_trace(path, required=("prompt_len", "output_len"))
    except TraceError as e:
        raise UsageError(f"workload.trace: {e}") from None
