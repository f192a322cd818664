"""The worker: measures one block of one config (a search trial or a re-measurement) in its own process.

    python -m autotuner.execution.worker REQUEST.json RESULT.json [--watch FD DEADLINE_S]

With --watch it first arms its watcher (see watchdog): it ends, with everything it started, at
its deadline or when the process that started it dies. It never touches the study database; it
writes a plain result file that the executor reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.errors import UnsupportedConfig
from autotuner.execution.harness import HarnessSettings, measure
from autotuner.execution.telemetry import Probe, probe_for
from autotuner.models.tasks import TaskMetricError
from autotuner.result import TrialResult
from autotuner.runners.base import Device, Runner, TimedRunner, WorkloadRunner, backend_of, host_peak_rss_mb
from autotuner.spec.schema import Spec

_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "failed to allocate memory",
    "unable to allocate",
    "cannot allocate memory",
    "bad_alloc",
    "no requests can be scheduled",  # transformers: a KV cache too small to hold one request
)


def classify(exc: BaseException) -> TrialResult:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
    if isinstance(exc, UnsupportedConfig):
        refused = {"refused": exc.refused} if exc.refused else {}
        return TrialResult.failure("unsupported", str(exc), **refused)
    if isinstance(exc, subprocess.TimeoutExpired):
        return TrialResult.failure("timeout", f"the command ran past its {exc.timeout:g} s and was killed")
    if isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKERS):
        return TrialResult.failure("oom", text)
    return TrialResult.failure("error", text)


def settings_of(spec: Spec) -> HarnessSettings:
    return HarnessSettings.of(spec.measurement)


def pin(device: Device, config: dict[str, Any]) -> None:
    """Hold exactly the cores the trial is measured on."""
    threads = int(config.get("threads") or len(device.cores))
    cores = device.cores[: max(1, threads)]
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def build(spec: Spec, config: dict[str, Any], device: Device, caps: dict[str, Any]) -> Runner:
    from autotuner.runners.registry import runner_for

    cls = runner_for(backend_of(config))
    reason = cls.check(spec, config, caps)
    if reason:
        raise UnsupportedConfig(reason)
    return cls(spec, config, device)


def block_settings(spec: Spec, block_s: float) -> HarnessSettings:
    """One re-measurement block: a fixed measuring time, no CV stop, no samples kept."""
    base = settings_of(spec)
    return dataclasses.replace(
        base,
        min_iters=min(base.min_iters, 5),
        min_time_s=block_s,
        max_time_s=block_s,
        cv_target=0.0,
        keep_samples=0,
    )


def derived(
    spec: Spec, metrics: dict[str, float], probe: Probe, windowed: bool = True, items: float | None = None
) -> dict[str, float]:
    """The probe's figures and the cost. The sampled GPU memory is peak_memory_mb; over a whole
    workload (setup and accuracy check included) only where the runner gives none. `items`: the
    items run in the probe's window (energy per item is its energy over them)."""
    from autotuner.metrics import usd_per_million_items

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
    from autotuner.execution.harness import ENERGY_METRICS

    named = [o.metric for o in spec.objectives] + [c.metric for c in spec.constraints]
    return any(m in ENERGY_METRICS for m in named)


def run_trial(
    spec: Spec,
    config: dict[str, Any],
    device: Device,
    caps: dict[str, Any],
    block_s: float | None = None,
) -> TrialResult:
    """One measurement block of a config in this fresh process.

    A search trial (block_s None) measures with the spec's settings and checks accuracy; a
    re-measurement block measures for block_s seconds and skips the accuracy check (accuracy does
    not change between processes; the config's trial measured it).
    """
    from autotuner.execution.accuracy import (
        ReferenceMismatch,
        check_reference,
        compare,
        data_info,
        task_scores,
    )
    from autotuner.models.artifacts import accuracy_inputs, reference_outputs
    from autotuner.models.builtins import model_inputs
    from autotuner.models.inputs import chunks, make_inputs

    pin(device, config)
    probe = probe_for(device)  # before setup: the GPU memory baseline
    try:
        if spec.scenario == "serving":
            from autotuner.execution.serving_trial import run_serving_trial

            result = run_serving_trial(spec, config, device, caps, probe, block_s)
            return dataclasses.replace(result, metrics=derived(spec, result.metrics, probe))
        runner = build(spec, config, device, caps)
        if isinstance(runner, WorkloadRunner):
            from autotuner.execution.load import LoadMeter

            runner.window = probe  # the runner marks its timed part
            runner.block_s = block_s  # a race block measures its own load level only (search.ladder)
            meter = LoadMeter()
            meter.start()
            started = time.perf_counter()
            metrics = runner.run_workload()
            metrics = {**metrics, "measure_s": time.perf_counter() - started}
            metrics["foreign_load"] = meter.stop()
            metrics = derived(spec, metrics, probe, windowed=False)
            return TrialResult(ok=True, metrics=metrics, info=runner.trial_info())
        assert isinstance(runner, TimedRunner), f"{type(runner).__name__} is neither timed nor a workload"
        batch_size = int(runner.value(runner.config, "batch_size"))
        specs = model_inputs(spec)
        started = time.perf_counter()
        runner.setup()
        batch = make_inputs(specs, batch_size, spec.data_seed)
        step = runner.prepare(batch)
        step()  # the first call (lazy init, compilation) belongs to setup
        runner.synchronize()
        setup_s = time.perf_counter() - started
        runner.activate()
        settings = settings_of(spec) if block_s is None else block_settings(spec, block_s)
        settings = settings.for_trial(device.kind == "cuda", _energy_chosen(spec))
        metrics, samples = measure(step, settings, batch_size, runner.synchronize, on_timed=probe.begin)
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
            check_reference(backend_of(config), runner.value(runner.config, "precision"), metrics)
            metrics.update(task_scores(spec, outs, ref))
        info = {**runner.trial_info(), **(data_info(spec) if block_s is None else {})}
        runner.teardown()
    except TaskMetricError as e:
        return TrialResult.failure("invalid-metric", str(e))
    except ReferenceMismatch as e:  # what it measured is kept, and says which model it was
        return TrialResult(False, e.metrics, "reference-mismatch", str(e))
    except Exception as e:  # noqa: BLE001 - every failure becomes classified data
        return classify(e)
    finally:
        probe.close()
    return TrialResult(ok=True, metrics=metrics, latency_samples_ms=samples, info=info)


def main(argv: list[str]) -> int:
    if len(argv) >= 6 and argv[3] == "--watch":
        from autotuner.watchdog import arm

        arm(int(argv[4]), float(argv[5]))  # first: before a model can hang or start anything
    from autotuner.spec.loading import parse_spec

    request = json.loads(Path(argv[1]).read_text())
    out_path = Path(argv[2])
    spec = parse_spec(request["spec"])
    device = Device.from_dict(request["device"])
    caps = request["caps"]
    result = run_trial(spec, request["config"], device, caps, request.get("block_s"))
    if spec.model_digest is not None:  # which model was measured: a retrained one is another
        result.info.setdefault("model_sha256", spec.model_digest)
    payload = result.to_dict()
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
