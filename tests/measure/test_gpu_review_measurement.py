"""The measurement findings of the second GPU review: energy per item over the items the window
ran, a window long enough for NVML's energy counter, an O(1) CV check (M2); a GPU warm-up by
time (M5); the llm runner's peak_memory_mb read like every GPU runner's (M4). The NVML readings
are faked (test_telemetry's FakeNvml); the harness and the worker are the real ones."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from helpers import make_spec_dict
from test_telemetry import Clock, FakeNvml, _probe

from autotuner.api import spec_from_dict
from autotuner.measure import worker
from autotuner.measure.harness import (
    ENERGY_WINDOW_S,
    GPU_WARMUP_S,
    HarnessSettings,
    RunningCv,
    measure,
)
from autotuner.measure.scenarios import _energy_chosen, derived
from autotuner.runners.base import Device

MiB = 2**20


def test_energy_per_item_is_the_windows_energy_over_the_items_it_ran() -> None:
    """A step busy half the window (the rest syncs and checks): power / busy-time throughput
    would read half the energy each item took."""
    nv, clock = FakeNvml(), Clock()
    probe = _probe(nv, clock)
    probe.begin()
    clock.t += 10
    nv.state["mj"] = 2_000_000  # 2000 J in 10 s: 200 W
    probe.end()
    items = 1000.0  # run in the window; the steps' own time summed to 5 s
    busy_throughput = items / 5.0
    out = probe.result(busy_throughput, items=items)
    probe.close()
    assert out["power_w"] == pytest.approx(200.0)
    assert out["energy_j_per_item"] == pytest.approx(2.0)  # 2000 J / 1000 items


def test_the_worker_hands_the_probe_the_items_of_its_timed_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_telemetry import OrderRunner, RecordingProbe

    calls: list[str] = []
    probes: list[RecordingProbe] = []
    OrderRunner.calls = calls

    def make(device: Device) -> RecordingProbe:
        probes.append(RecordingProbe(calls, {"power_w": 100.0}))
        return probes[-1]

    monkeypatch.setattr(worker, "build", lambda s, c, d, caps: OrderRunner(s, c, d))
    monkeypatch.setattr(worker, "probe_for", make)
    spec = spec_from_dict(make_spec_dict())
    device = Device("cuda", tuple(sorted(os.sched_getaffinity(0))), 0)
    result = worker.run_trial(spec, {"backend": "torch-eager", "batch_size": 2}, device, {}, block_s=0.02)
    assert result.ok, result.failure_message
    timed = calls[calls.index("begin") + 1 : calls.index("end")]
    assert probes[0].items == 2 * len(timed) == 2 * result.metrics["n_iterations"]


def test_an_energy_objective_gets_a_window_nvml_can_count() -> None:
    base = HarnessSettings(min_time_s=0.5, max_time_s=3.0)
    assert base.for_trial(on_gpu=False, energy_metric=False) == base
    long = base.for_trial(on_gpu=False, energy_metric=True)
    assert long.min_time_s == ENERGY_WINDOW_S and long.max_time_s >= ENERGY_WINDOW_S
    gpu = base.for_trial(on_gpu=True, energy_metric=False)
    assert gpu.warmup_s == GPU_WARMUP_S and gpu.min_time_s == 0.5
    spec = spec_from_dict(
        make_spec_dict(objectives=[{"metric": "energy_j_per_item", "direction": "minimize"}])
    )
    assert _energy_chosen(spec)
    assert not _energy_chosen(spec_from_dict(make_spec_dict()))


def test_the_running_cv_is_numpys() -> None:
    rng = np.random.default_rng(0)
    xs = rng.lognormal(mean=12.0, sigma=0.3, size=5000)  # ns-sized latencies
    cv = RunningCv()
    for x in xs:
        cv.add(float(x))
    assert cv.value() == pytest.approx(xs.std() / xs.mean(), rel=1e-9)
    assert RunningCv().value() == float("inf")


def test_a_gpu_warm_up_lasts_its_time_then_the_window_begins() -> None:
    events: list[str] = []
    settings = dataclasses.replace(
        HarnessSettings(warmup_iters=3, min_iters=5, min_time_s=0.0, max_time_s=0.05), warmup_s=0.05
    )
    metrics, _ = measure(lambda: events.append("step"), settings, 1, on_timed=lambda: events.append("begin"))
    begin = events.index("begin")
    assert begin > 3  # 50 ms of calls, not 3
    assert events.count("step") - begin == metrics["n_iterations"]
    events.clear()
    measure(
        lambda: events.append("step"),
        HarnessSettings(warmup_iters=3, min_iters=5, min_time_s=0.0),
        1,
        on_timed=lambda: events.append("begin"),
    )
    assert events.index("begin") == 3  # CPU trials: the count alone


def test_a_workload_runners_missing_peak_memory_is_nvmls_over_its_run() -> None:
    """The llm runner on a GPU gives torch_allocated_mb and leaves peak_memory_mb to NVML, as
    the command runner does; a runner's own peak_memory_mb is still kept."""
    nv, clock = FakeNvml(), Clock()
    probe = _probe(nv, clock)  # baseline 1000 MiB
    nv.state["used"] = 4000 * MiB
    probe.take()
    spec = spec_from_dict(make_spec_dict())
    out = derived(spec, {"output_tokens_s": 10.0, "torch_allocated_mb": 900.0}, probe, windowed=False)
    assert out["peak_memory_mb"] == pytest.approx(3000.0) and out["torch_allocated_mb"] == 900.0
    own = derived(spec, {"output_tokens_s": 10.0, "peak_memory_mb": 5.0}, probe, windowed=False)
    assert own["peak_memory_mb"] == 5.0
    probe.close()


needs_cuda = pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device; this machine has none"
)


@needs_cuda
def test_llm_on_cuda_reports_device_memory_as_peak_and_torchs_apart() -> None:
    pytest.importorskip("transformers")
    from test_llm_runner import llm_spec

    from autotuner.backends.llm.runner import LlmRunner
    from autotuner.measure.telemetry import probe_for

    spec = spec_from_dict(llm_spec())
    config = {"backend": "llm", "device": "cuda", "batch_size": 8, "kv_budget_mb": 0.25, "page_size": 16}
    device = Device("cuda", tuple(sorted(os.sched_getaffinity(0))), 0)
    probe = probe_for(device)
    runner = LlmRunner(spec, config, device)
    runner.window = probe
    metrics = derived(spec, runner.run_workload(), probe, windowed=False)
    probe.close()
    assert metrics["torch_allocated_mb"] > 0
    if probe.why_off:
        assert metrics["peak_memory_mb"] == metrics["torch_allocated_mb"]
    else:
        assert metrics["peak_memory_mb"] == metrics["gpu_peak_memory_mb"] >= metrics["torch_allocated_mb"]
