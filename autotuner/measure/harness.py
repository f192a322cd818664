"""The shared measurement harness: warm-up, timed iterations until stable or a limit."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotuner.measure.load import LoadMeter

# On a GPU the warm-up is also a time: a few sub-ms calls after an idle setup leave the clocks
# ramping into the first timed samples (Triton's do_bench and flashinfer warm up for 25 ms).
GPU_WARMUP_S = 0.2
# NVML's energy counter moves about every 100 ms and power is sampled part of the time: a window
# an energy figure is chosen on is at least this long.
ENERGY_WINDOW_S = 5.0
ENERGY_METRICS = ("energy_j_per_item", "power_w")
# Far out of the running: a step at under this share of the give-up floor (the floor is half the
# leader's throughput, so under a quarter of the leader) ends the warm-up after one step, and two
# timed steps at under it end the block before min_iters, where the steps are long enough to judge
# (a quarter of min_time_s: a fast step is judged at min_iters as before). A slow config (a bf16
# MiniLM batch of 16 on a CPU without bf16 units takes 3.4 s a step) no longer spends its whole
# warm-up. A warm-up step runs slower than the steady state, not 4x faster, so no config that
# could win is cut.
HOPELESS_SHARE = 0.5


@dataclass(frozen=True)
class HarnessSettings:
    warmup_iters: int = 3
    warmup_s: float = 0.0  # and at least this long (GPU trials: GPU_WARMUP_S)
    min_iters: int = 10
    max_iters: int = 10_000
    min_time_s: float = 0.5
    max_time_s: float = 3.0
    cv_target: float = 0.10
    keep_samples: int = 500
    # A search trial's early stop (set per trial by the driver, never by the spec): once the
    # block is past min_iters and a quarter of min_time_s, it stops with reason "out-of-running"
    # when even its optimistic throughput (mean step time less 3 standard errors) is below this;
    # far below it (HOPELESS_SHARE), after one warm-up step and two timed ones.
    give_up_below_items_s: float | None = None

    @classmethod
    def of(cls, measurement: Any) -> HarnessSettings:
        """The harness's part of the spec's `measurement` section (the fields of the same name)."""
        names = [f.name for f in dataclasses.fields(cls) if hasattr(measurement, f.name)]
        return cls(**{name: getattr(measurement, name) for name in names})

    def for_trial(self, on_gpu: bool, energy_metric: bool) -> HarnessSettings:
        """These settings for one trial: a timed warm-up on a GPU, and a window long enough for
        NVML's energy counter when an energy metric is an objective or a constraint."""
        out = self
        if on_gpu:
            out = dataclasses.replace(out, warmup_s=max(out.warmup_s, GPU_WARMUP_S))
        if energy_metric and out.max_time_s > 0:
            window = max(out.min_time_s, ENERGY_WINDOW_S)
            out = dataclasses.replace(out, min_time_s=window, max_time_s=max(out.max_time_s, window))
        return out


STOP_REASONS = ("settled", "max-time", "max-iters", "out-of-running")


@dataclass
class Measured:
    """What one timed block gave: its metrics, the samples kept (ms), and why it stopped."""

    metrics: dict[str, float]
    samples: list[float]
    stop_reason: str


def measure(
    step: Callable[[], object],
    settings: HarnessSettings,
    items_per_step: int,
    synchronize: Callable[[], None] | None = None,
    on_timed: Callable[[], None] | None = None,
) -> tuple[dict[str, float], list[float]]:
    """Time `step` (one batch). Returns metrics and the latency samples kept (ms): see
    `measure_block`, which also says why the block stopped."""
    out = measure_block(step, settings, items_per_step, synchronize, on_timed)
    return out.metrics, out.samples


def measure_block(
    step: Callable[[], object],
    settings: HarnessSettings,
    items_per_step: int,
    synchronize: Callable[[], None] | None = None,
    on_timed: Callable[[], None] | None = None,
) -> Measured:
    """Time `step` (one batch): the metrics, the samples kept and the stop reason.

    Each sample is one call of `step` followed by `synchronize` (device wait), timed with
    perf_counter_ns. The loop stops when min_iters and min_time_s are both reached and the CV is
    at or below cv_target ("settled"), or when max_iters or max_time_s runs out ("max-iters",
    "max-time"; then `unstable` is 1 unless the CV is at target), or early when the config is out
    of the running (`give_up_below_items_s`). The warm-up runs warmup_iters calls and at least
    warmup_s; `on_timed` is called between the warm-up and the first timed call (where a
    telemetry window begins). The CV is kept running (Welford), so a check costs the same at the
    10,000th sample as at the 10th.
    """
    sync = synchronize or (lambda: None)
    clock = time.perf_counter_ns
    warm_start = clock()
    warm_until = warm_start + int(settings.warmup_s * 1e9)
    done = 0
    floor = settings.give_up_below_items_s
    hopeless = None if floor is None else floor * HOPELESS_SHARE
    quarter = settings.min_time_s / 4 * 1e9  # a step shorter than this is too noisy to judge alone
    while done < settings.warmup_iters or (settings.warmup_s > 0 and clock() < warm_until):
        t0 = clock()
        step()
        sync()
        done += 1
        took = clock() - t0
        if hopeless is not None and took >= quarter and items_per_step * 1e9 / took < hopeless:
            break  # the timed steps say how far out; more warm-up would not bring it back
    warmup_s = (clock() - warm_start) / 1e9
    if on_timed is not None:
        on_timed()  # the telemetry window: the timed iterations only
    meter = LoadMeter()
    meter.start()
    started = clock()
    samples, cv, reason = _timed(step, sync, settings, items_per_step)
    measure_s = (clock() - started) / 1e9
    foreign = meter.stop()
    stable = len(samples) >= settings.min_iters and cv.value() <= settings.cv_target
    ms = np.asarray(samples, dtype=np.float64) / 1e6
    metrics = summarize(ms, items_per_step, measure_s, stable)
    metrics["foreign_load"] = foreign
    metrics["warmup_s"] = warmup_s
    return Measured(metrics, keep(ms, settings.keep_samples), reason)


def _timed(
    step: Callable[[], object], sync: Callable[[], None], settings: HarnessSettings, items_per_step: int
) -> tuple[list[int], RunningCv, str]:
    """The timed loop: the samples (ns), their running CV, and why it stopped."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    cv = RunningCv()
    started = clock()
    check_every = max(1, settings.min_iters // 2)
    floor = settings.give_up_below_items_s
    while True:
        t0 = clock()
        step()
        sync()
        t1 = clock()
        samples.append(t1 - t0)
        cv.add(t1 - t0)
        n = len(samples)
        elapsed = (t1 - started) / 1e9
        if floor is not None and 2 <= n < settings.min_iters and elapsed >= settings.min_time_s / 4:
            if items_per_step * 1e9 / cv.mean < floor * HOPELESS_SHARE:
                return samples, cv, "out-of-running"
        if n >= settings.min_iters and n % check_every == 0:
            if elapsed >= settings.min_time_s and cv.value() <= settings.cv_target:
                return samples, cv, "settled"
            if floor is not None and elapsed >= settings.min_time_s / 4:
                if cv.optimistic_rate(items_per_step) < floor:
                    return samples, cv, "out-of-running"
        if n >= settings.max_iters:
            return samples, cv, "max-iters"
        if elapsed >= settings.max_time_s:
            return samples, cv, "max-time"


class RunningCv:
    """std / mean of the values added so far (population std, as numpy's), updated in O(1)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def optimistic_rate(self, items_per_step: int, z: float = 3.0) -> float:
        """Items per second if each step took its mean less z standard errors (ns samples): a
        bound the config's true rate is very unlikely to beat."""
        if self.n < 2:
            return float("inf")
        sem = (max(self.m2, 0.0) / (self.n - 1)) ** 0.5 / self.n**0.5
        fastest = self.mean - z * sem
        return float("inf") if fastest <= 0 else items_per_step * 1e9 / fastest

    def value(self) -> float:
        if self.n == 0 or self.mean <= 0:
            return float("inf")
        return (max(self.m2, 0.0) / self.n) ** 0.5 / self.mean


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
