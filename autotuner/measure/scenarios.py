"""How a trial drives its runner, one class per scenario (optimum-benchmark's `scenarios/`).

`BatchScenario` times back-to-back batches of a fixed size on a timed runner; `ServingScenario`
drives the timed runner's model with arriving requests through the dynamic batcher
(`serving_trial`); `WorkloadScenario` lets a workload runner run its own load (LLM serving). Each
`run` returns the trial's result with the probe's figures and the cost added (`derived`); what
goes wrong propagates to the worker, which turns it into a classified failure.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from autotuner.measure.accuracy import check_reference, compare, data_info, task_scores
from autotuner.measure.harness import ENERGY_METRICS, HarnessSettings, measure_block
from autotuner.measure.load import LoadMeter
from autotuner.measure.serving_trial import run_serving_trial
from autotuner.measure.telemetry import Probe
from autotuner.metrics import usd_per_million_items
from autotuner.models.artifacts import accuracy_inputs, reference_outputs
from autotuner.models.builtins import model_inputs
from autotuner.models.inputs import chunks, make_inputs
from autotuner.result import TrialResult
from autotuner.runners.base import Device, TimedRunner, WorkloadRunner, backend_of, host_peak_rss_mb
from autotuner.spec.schema import Spec


def harness_settings(spec: Spec) -> HarnessSettings:
    return HarnessSettings.of(spec.measurement)


def block_settings(spec: Spec, block_s: float) -> HarnessSettings:
    """One re-measurement block: a fixed measuring time, no CV stop, no samples kept."""
    base = harness_settings(spec)
    return dataclasses.replace(
        base,
        min_iters=min(base.min_iters, 5),
        min_time_s=block_s,
        max_time_s=block_s,
        cv_target=0.0,
        keep_samples=0,
    )


def first_look_settings(settings: HarnessSettings, look_s: float) -> HarnessSettings:
    """A first look: the trial's warm-up, then a fixed look_s of timed batches (at least 3)."""
    return dataclasses.replace(
        settings, min_iters=min(settings.min_iters, 3), min_time_s=look_s, max_time_s=look_s
    )


def derived(
    spec: Spec, metrics: dict[str, float], probe: Probe, windowed: bool = True, items: float | None = None
) -> dict[str, float]:
    """The probe's figures and the cost. The sampled GPU memory is peak_memory_mb; over a whole
    workload (setup and accuracy check included) only where the runner gives none. `items`: the
    items run in the probe's window (energy per item is its energy over them)."""

    # Items: batch items for timed runners, generated tokens for LLM serving.
    items_s = metrics.get("throughput_items_s", metrics.get("output_tokens_s"))
    out = {**metrics, **(probe.result(items_s) if items is None else probe.result(items_s, items=items))}
    if "gpu_peak_memory_mb" in out and (windowed or "peak_memory_mb" not in metrics):
        out["peak_memory_mb"] = out["gpu_peak_memory_mb"]
    cost = usd_per_million_items(spec.cost.usd_per_hour, out) if spec.cost is not None else None
    if cost is not None:
        out["usd_per_million_items"] = cost
    return out


def _energy_chosen(spec: Spec) -> bool:
    """Whether an energy figure is an objective or a constraint of the spec."""

    named = [o.metric for o in spec.objectives] + [c.metric for c in spec.constraints]
    return any(m in ENERGY_METRICS for m in named)


class Scenario(ABC):
    """One measurement block of one config: a search trial (block_s None: the spec's settings and
    the accuracy check) or a re-measurement block of block_s seconds (no accuracy check: accuracy
    does not change between processes; the config's trial measured it)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        # A search trial's early-stop floor (items/s) from the driver: see HarnessSettings.
        self.give_up_below: float | None = None
        # A search trial that is a first look (measurement.first_look_s): timed for this long.
        # Batch trials honour it; serving and workload trials measure at full length.
        self.first_look_s: float | None = None

    @abstractmethod
    def run(self, device: Device, probe: Probe, block_s: float | None) -> TrialResult: ...


class BatchScenario(Scenario):
    """Back-to-back batches of the config's batch size, timed by the harness."""

    def __init__(self, spec: Spec, config: dict[str, Any], runner: TimedRunner) -> None:
        super().__init__(spec)
        self.config = config
        self.runner = runner

    def run(self, device: Device, probe: Probe, block_s: float | None) -> TrialResult:
        spec, runner = self.spec, self.runner
        batch_size = int(runner.knob(runner.config, "batch_size"))
        specs = model_inputs(spec)
        started = time.perf_counter()
        runner.setup()
        batch = make_inputs(specs, batch_size, spec.data_seed)
        step = runner.prepare(batch)
        step()  # the first call (lazy init, compilation) belongs to setup
        runner.synchronize()
        setup_s = time.perf_counter() - started
        runner.activate()
        settings = harness_settings(spec) if block_s is None else block_settings(spec, block_s)
        look = self.first_look_s if block_s is None else None
        if look is not None:  # before for_trial: an energy metric still gets its window
            settings = first_look_settings(settings, look)
        settings = settings.for_trial(device.kind == "cuda", _energy_chosen(spec))
        if block_s is None and self.give_up_below is not None:  # a search trial, not a race block
            settings = dataclasses.replace(settings, give_up_below_items_s=self.give_up_below)
        timed = measure_block(step, settings, batch_size, runner.synchronize, on_timed=probe.begin)
        metrics, samples = timed.metrics, timed.samples
        probe.end()
        metrics["setup_s"] = setup_s
        metrics["host_rss_mb"] = host_peak_rss_mb()
        device_mb = runner.device_peak_memory_mb()
        if device_mb is not None or device.kind != "cuda":  # host memory is never GPU memory
            metrics["peak_memory_mb"] = device_mb if device_mb is not None else metrics["host_rss_mb"]
        metrics = derived(spec, metrics, probe, items=batch_size * metrics["n_iterations"])
        if block_s is None:
            ref = reference_outputs(spec)
            outs = np.concatenate(
                [runner.predict(b)[:n] for b, n in chunks(accuracy_inputs(spec), specs, batch_size)]
            )
            metrics.update(compare(outs, ref))
            check_reference(backend_of(self.config), runner.knob(runner.config, "precision"), metrics)
            metrics.update(task_scores(spec, outs, ref))
        info = {**runner.trial_info(), **(data_info(spec) if block_s is None else {})}
        info["stop_reason"] = timed.stop_reason
        if look is not None:
            info |= {"fidelity": "short", "first_look_s": look}
        runner.teardown()
        return TrialResult(ok=True, metrics=metrics, latency_samples_ms=samples, info=info)


class ServingScenario(Scenario):
    """Arriving requests through the dynamic batcher, onto `instances` copies of the runner; the
    instances are built inside `run`, so their construction counts as setup."""

    def __init__(self, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> None:
        super().__init__(spec)
        self.config = config
        self.caps = caps

    def run(self, device: Device, probe: Probe, block_s: float | None) -> TrialResult:
        result = run_serving_trial(self.spec, self.config, device, self.caps, probe, block_s)
        return dataclasses.replace(result, metrics=derived(self.spec, result.metrics, probe))


class WorkloadScenario(Scenario):
    """The runner runs its own workload and marks its timed part on the probe; the load meter
    watches the whole of it. Every block runs the whole workload."""

    def __init__(self, spec: Spec, runner: WorkloadRunner) -> None:
        super().__init__(spec)
        self.runner = runner

    def run(self, device: Device, probe: Probe, block_s: float | None) -> TrialResult:
        runner = self.runner
        runner.window = probe  # the runner marks its timed part
        runner.block_s = block_s  # a race block measures its own load level only (search.ladder)
        meter = LoadMeter()
        meter.start()
        started = time.perf_counter()
        metrics = runner.run_workload()
        metrics = {**metrics, "measure_s": time.perf_counter() - started}
        metrics["foreign_load"] = meter.stop()
        metrics = derived(self.spec, metrics, probe, windowed=False)
        return TrialResult(ok=True, metrics=metrics, info=runner.trial_info())
