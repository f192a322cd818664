"""The shared measurement harness: warm-up, timed iterations until stable or a limit."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotuner.execution.load import LoadMeter


@dataclass(frozen=True)
class HarnessSettings:
    warmup_iters: int = 3
    min_iters: int = 10
    max_iters: int = 10_000
    min_time_s: float = 0.5
    max_time_s: float = 3.0
    cv_target: float = 0.10
    keep_samples: int = 500

    @classmethod
    def of(cls, measurement: Any) -> HarnessSettings:
        """The harness's part of the spec's `measurement` section (the fields of the same name)."""
        return cls(**{f.name: getattr(measurement, f.name) for f in dataclasses.fields(cls)})


def measure(
    step: Callable[[], object],
    settings: HarnessSettings,
    items_per_step: int,
    synchronize: Callable[[], None] | None = None,
) -> tuple[dict[str, float], list[float]]:
    """Time `step` (one batch). Returns metrics and the latency samples kept (ms).

    Each sample is one call of `step` followed by `synchronize` (device wait), timed with
    perf_counter_ns. The loop stops when min_iters and min_time_s are both reached and the CV is
    at or below cv_target, or when max_iters or max_time_s runs out (then `unstable` is 1).
    """
    sync = synchronize or (lambda: None)
    for _ in range(settings.warmup_iters):
        step()
        sync()
    samples: list[int] = []
    meter = LoadMeter()
    meter.start()
    clock = time.perf_counter_ns
    started = clock()
    stable = False
    check_every = max(1, settings.min_iters // 2)
    while True:
        t0 = clock()
        step()
        sync()
        t1 = clock()
        samples.append(t1 - t0)
        n = len(samples)
        elapsed = (t1 - started) / 1e9
        if n >= settings.min_iters and elapsed >= settings.min_time_s and n % check_every == 0:
            arr = np.asarray(samples, dtype=np.float64)
            if arr.std() / arr.mean() <= settings.cv_target:
                stable = True
                break
        if n >= settings.max_iters or elapsed >= settings.max_time_s:
            arr = np.asarray(samples, dtype=np.float64)
            stable = n >= settings.min_iters and arr.std() / arr.mean() <= settings.cv_target
            break
    measure_s = (clock() - started) / 1e9
    foreign = meter.stop()
    ms = np.asarray(samples, dtype=np.float64) / 1e6
    metrics = summarize(ms, items_per_step, measure_s, stable)
    metrics["foreign_load"] = foreign
    return metrics, keep(ms, settings.keep_samples)


def summarize(ms: np.ndarray, items_per_step: int, measure_s: float, stable: bool) -> dict:
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    mean = float(ms.mean())
    return {
        "latency_p50_ms": float(p50),
        "latency_p90_ms": float(p90),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
        "latency_mean_ms": mean,
        "latency_std_ms": float(ms.std()),
        "latency_cv": float(ms.std() / mean) if mean > 0 else float("nan"),
        "throughput_items_s": items_per_step * len(ms) / (float(ms.sum()) / 1e3),
        "n_iterations": float(len(ms)),
        "measure_s": measure_s,
        "unstable": 0.0 if stable else 1.0,
    }


def keep(ms: np.ndarray, limit: int) -> list[float]:
    """Up to `limit` samples, evenly spaced over the run so that drift stays visible."""
    if limit <= 0:
        return []
    if len(ms) > limit:
        ms = ms[np.linspace(0, len(ms) - 1, limit).astype(int)]
    return [round(float(x), 4) for x in ms]
