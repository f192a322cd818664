"""One trial of the serving scenario in the worker: the timed runner's model as `instances` copies
behind the dynamic batcher, loaded as the spec's `serving` section says.

Each instance is its own runner (set up in its lane's thread, on its share of the cores, with
`threads` split evenly); a batch of n requests runs the runner's step for n rows, prepared once
per size (all sizes up to max_batch_size are prepared and run during setup). The prepared rows
are the seeded inputs, so gathering request rows into a batch and host-device copies are not
part of a request's latency (as in the batch scenario's device-resident policy).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from autotuner.errors import UnsupportedConfig
from autotuner.measure.accuracy import check_reference, compare, data_info, task_scores
from autotuner.measure.arrivals import from_trace, poisson
from autotuner.measure.build import checked_class
from autotuner.measure.harness import keep
from autotuner.measure.load import LoadMeter
from autotuner.measure.serving import Lane, Server, find_max_rate, meets_slo, split_cores, summarize
from autotuner.models.artifacts import accuracy_inputs, reference_outputs
from autotuner.models.builtins import model_inputs
from autotuner.models.inputs import chunks, make_inputs
from autotuner.result import TrialResult
from autotuner.runners.base import Device, TimedRunner, backend_of, host_peak_rss_mb
from autotuner.spec.schema import Spec
from autotuner.spec.trace import read_trace


class RunnerInstance:
    """A timed runner as a serving instance: a step per batch size, prepared on first use."""

    def __init__(self, runner: TimedRunner, spec: Spec) -> None:
        self.runner = runner
        self.spec = spec
        self.specs = model_inputs(spec)
        self.steps: dict[int, Any] = {}

    def setup(self) -> None:
        self.runner.setup()

    def run(self, rows: int) -> None:
        step = self.steps.get(rows)
        if step is None:
            step = self.steps[rows] = self.runner.prepare(make_inputs(self.specs, rows, self.spec.data_seed))
        with self.runner.instance_stream():
            step()


def instances_of(
    spec: Spec, config: dict[str, Any], device: Device, caps: dict[str, Any]
) -> list[RunnerInstance]:
    """The config's runner as `instances` copies, `threads` split evenly between them."""
    cls = checked_class(spec, config, caps)
    if not issubclass(cls, TimedRunner):
        raise UnsupportedConfig(f"the serving scenario drives timed runners; {cls.name} is not one")
    n = int(cls.knob(config, "instances"))
    threads = int(config.get("threads") or len(device.cores))
    own = {**config, "threads": max(1, threads // n)}
    return [RunnerInstance(cls(spec, own, device), spec) for _ in range(n)]


def run_serving_trial(
    spec: Spec,
    config: dict[str, Any],
    device: Device,
    caps: dict[str, Any],
    probe: Any,
    block_s: float | None,
) -> TrialResult:
    """Setup, the load (and the max-rate bisection), then the accuracy check (a search trial only)."""

    s = spec.serving
    assert s is not None, "bound specs with scenario serving have a serving section"
    started = time.perf_counter()
    instances = instances_of(spec, config, device, caps)
    cls = type(instances[0].runner)
    max_batch = int(cls.knob(config, "max_batch_size"))
    timeout_s = float(cls.knob(config, "batch_timeout_ms")) / 1e3
    threads = int(config.get("threads") or len(device.cores))
    warmup_iters = spec.measurement.warmup_iters

    def warm(inst: Any) -> None:
        for rows in range(1, max_batch + 1):  # prepare every size, and its first call
            inst.run(rows)
        for _ in range(warmup_iters):
            inst.run(max_batch)
        inst.runner.activate()

    cores = split_cores(device.cores[:threads], len(instances))
    server = Server(
        [Lane(i, c, warm) for i, c in zip(instances, cores, strict=True)], max_batch, timeout_s, s.queue_limit
    )
    try:
        server.start()
        setup_s = time.perf_counter() - started
        meter = LoadMeter()
        meter.start()
        probe.begin()
        t_measure = time.perf_counter()
        metrics, latencies, curve = measure_load(server, spec, block_s)
        measure_s = time.perf_counter() - t_measure
        probe.end()
        foreign = meter.stop()
        metrics.update(
            setup_s=setup_s, measure_s=measure_s, foreign_load=foreign, host_rss_mb=host_peak_rss_mb()
        )
        device_mb = instances[0].runner.device_peak_memory_mb()
        if device_mb is not None or device.kind != "cuda":
            metrics["peak_memory_mb"] = device_mb if device_mb is not None else metrics["host_rss_mb"]
        if block_s is None:
            runner = instances[0].runner
            ref = reference_outputs(spec)
            outs = np.concatenate(
                [
                    runner.predict(b)[:n]
                    for b, n in chunks(accuracy_inputs(spec), instances[0].specs, max_batch)
                ]
            )
            metrics.update(compare(outs, ref))
            check_reference(backend_of(config), runner.knob(runner.config, "precision"), metrics)
            metrics.update(task_scores(spec, outs, ref))
    finally:
        server.stop()
        for inst in instances:
            inst.runner.teardown()
    samples = keep(np.asarray(latencies), spec.measurement.keep_samples if block_s is None else 0)
    info = {
        **instances[0].runner.trial_info(),
        "instance_cores": [list(c) for c in cores],
        **(data_info(spec) if block_s is None else {}),
    }
    if curve:
        info["rate_curve"] = sorted(curve, key=lambda p: p["offered_rps"])
    return TrialResult(ok=True, metrics=metrics, latency_samples_ms=samples, info=info)


# What a point of the rate/latency curve keeps (TrialResult.info["rate_curve"]).
CURVE_KEYS = (
    "request_latency_p50_ms",
    "request_latency_p95_ms",
    "request_latency_p99_ms",
    "requests_s",
    "rejected_requests",
)


def measure_load(
    server: Server, spec: Spec, block_s: float | None = None
) -> tuple[dict[str, float], list[float], list[dict[str, float]]]:
    """The spec's load, then (with max_rate) the bisection; the metrics and the request latencies
    (ms) of the fixed load, else of the highest passing probe (else of the lowest rate), and the
    rate/latency curve of every open-loop run (the fixed rate and each probe). A re-measurement
    block runs the fixed load for block_s seconds instead of duration_s."""
    s = spec.serving
    assert s is not None
    if block_s is not None:
        s = s.model_copy(update={"duration_s": block_s})
    seed = spec.data_seed
    metrics: dict[str, float] = {}
    latencies: list[float] = []
    curve: list[dict[str, float]] = []

    def one(run: Any) -> dict[str, float]:
        accepted, batcher = run
        latencies[:] = [r.latency_s * 1e3 for r in accepted]
        return summarize(accepted, batcher, s.slo_p95_ms, s.warmup_s)

    def point(rate: float, run: Any) -> None:
        """One point of the rate/latency curve (the report plots it): offered rate, percentiles."""
        m = summarize(*run, s.slo_p95_ms, s.warmup_s)
        curve.append(
            {"offered_rps": float(rate), **{k: m[k] for k in CURVE_KEYS if k in m and math.isfinite(m[k])}}
        )

    if s.rate_rps is not None:
        fixed = server.run_open(poisson(s.rate_rps, s.duration_s, s.requests, seed))
        metrics = one(fixed)
        point(s.rate_rps, fixed)
    elif s.trace is not None:
        metrics = one(
            server.run_open(from_trace(read_trace(spec.resolve(s.trace)), s.duration_s, s.requests))
        )
    elif s.concurrency is not None:
        metrics = one(server.run_closed(s.concurrency, s.duration_s, s.requests))
    if s.max_rate is not None:
        m, slo = s.max_rate, float(s.slo_p95_ms or 0)
        probes: dict[float, Any] = {}

        def passes(rate: float) -> bool:
            run = probes[rate] = server.run_open(poisson(rate, m.duration_s, s.requests, seed))
            point(rate, run)
            return meets_slo(*run, slo, s.warmup_s)

        best = find_max_rate(passes, m.low, m.high, m.steps)
        if not metrics:  # no fixed load: the probe at the answer stands for the config
            metrics = one(probes[best if best > 0 else m.low])
        metrics["max_rate_rps"] = best
    return metrics, latencies, curve
