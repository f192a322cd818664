"""Device telemetry without a GPU: the sampler's math against a fake NVML, RAPL against a fake
powercap tree, the worker's order around the timed window, and the cost metric end to end."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from helpers import FAST_MEASUREMENT, make_spec_dict, write_spec
from optuna.trial import TrialState

from autotuner.api import load_spec, run, spec_from_dict
from autotuner.errors import SpecError
from autotuner.measure import telemetry, worker
from autotuner.measure.telemetry import GpuProbe, NvmlGpu, Off, RaplProbe, probe_for, rapl_zones
from autotuner.progress import Progress
from autotuner.runners.base import Device, TimedRunner

MiB = 2**20


class NVMLError(Exception):
    pass


class FakeNvml:
    """The pynvml calls the sampler makes; each reading comes from `state`, set by the test."""

    NVML_CLOCK_SM = 1

    def __init__(self, energy: bool = True, fail_init: bool = False) -> None:
        self.state: dict[str, Any] = {"used": 1000 * MiB, "util": 0, "sm": 1980, "mw": 100_000, "mj": 0}
        self.energy, self.fail_init = energy, fail_init
        self.opened: list[Any] = []
        self.shut = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut += 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:
        self.opened.append(i)
        return ("gpu", i)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        self.opened.append(uuid)
        return ("gpu", uuid)

    def nvmlDeviceGetMemoryInfo(self, h: Any) -> Any:
        return type("Mem", (), {"used": self.state["used"]})()

    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        return type("Util", (), {"gpu": self.state["util"]})()

    def nvmlDeviceGetClockInfo(self, h: Any, kind: int) -> int:
        assert kind == self.NVML_CLOCK_SM
        return self.state["sm"]

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        return self.state["mw"]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Any) -> int:
        if not self.energy:
            raise NVMLError("Not Supported")
        return self.state["mj"]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        return self.state.get("reasons", 0)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _probe(nv: FakeNvml, clock: Clock) -> GpuProbe:
    gpu, why = NvmlGpu.open(0, nv)
    assert gpu is not None, why
    return GpuProbe(gpu, interval_s=None, clock=clock)


def test_gpu_window_figures_from_the_energy_counter() -> None:
    nv, clock = FakeNvml(), Clock()
    probe = _probe(nv, clock)  # baseline: 1000 MiB before setup
    nv.state["used"] = 5000 * MiB  # setup (compile buffers), not the steady state
    probe.take()
    nv.state.update(used=3000 * MiB, util=90, sm=1800, mj=50_000, reasons=0x1)  # idle bit only
    probe.begin()
    for used in (3400, 3200):
        clock.t += 1
        nv.state.update(used=used * MiB, util=100, mw=300_000, reasons=0x4 | 0x1)  # power cap
        probe.take()
    clock.t += 2
    nv.state.update(used=3100 * MiB, util=80, mj=50_000 + 1_200_000)  # 1200 J in 4 s
    probe.end()
    out = probe.result(items_s=100.0)
    probe.close()
    assert out["gpu_peak_memory_mb"] == pytest.approx(2400)  # 3400 - 1000: the window's peak
    assert out["power_w"] == pytest.approx(300.0)  # the counter, not the sampled power
    assert out["energy_j_per_item"] == pytest.approx(3.0)
    assert out["gpu_util_pct"] == pytest.approx((90 + 100 + 100 + 80) / 4)
    assert out["sm_clock_mhz"] == pytest.approx(1800)
    assert out["gpu_throttle"] == 0x4
    assert nv.shut == 1


def test_gpu_power_integrated_where_the_counter_is_not_supported() -> None:
    nv, clock = FakeNvml(energy=False), Clock()
    probe = _probe(nv, clock)
    nv.state["mw"] = 100_000
    probe.begin()
    clock.t += 1
    nv.state["mw"] = 300_000
    probe.take()
    clock.t += 3
    probe.end()  # 100 -> 300 W over 1 s, then 300 W for 3 s: (200 + 900) / 4
    out = probe.result(items_s=None)
    assert out["power_w"] == pytest.approx(275.0)
    assert "energy_j_per_item" not in out  # no throughput given
    assert out["gpu_throttle"] == 0


def test_memory_never_goes_below_the_baseline_and_a_workload_gets_memory_only() -> None:
    nv, clock = FakeNvml(), Clock()
    probe = _probe(nv, clock)
    nv.state["used"] = 900 * MiB  # another process freed memory
    probe.take()
    assert probe.result() == {"gpu_peak_memory_mb": 0.0}


def test_the_trial_gpu_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = FakeNvml()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    NvmlGpu.open(1, nv)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    NvmlGpu.open(0, nv)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    NvmlGpu.open(2, nv)
    assert nv.opened == [5, "GPU-1234", 2]


def test_the_sampler_thread_samples_and_stops() -> None:
    nv = FakeNvml()
    gpu, _ = NvmlGpu.open(0, nv)
    probe = GpuProbe(gpu, interval_s=0.005)
    time.sleep(0.1)
    probe.close()
    n = len(probe.samples)
    assert n >= 5 and probe.thread is None
    time.sleep(0.02)
    assert len(probe.samples) == n


def test_no_driver_or_no_package_turns_the_probe_off() -> None:
    off = probe_for(Device("cuda", (0,), 0), nvml=FakeNvml(fail_init=True))
    assert isinstance(off, Off) and "NVML did not start" in off.why_off
    assert off.result(10.0) == {}
    try:
        import pynvml  # noqa: F401
    except ImportError:
        off = probe_for(Device("cuda", (0,), 0))
        assert isinstance(off, Off) and "nvidia-ml-py" in off.why_off


def _zone(root: Path, name: str, label: str, uj: int | None, range_uj: int = 1_000_000_000) -> Path:
    d = root / name
    d.mkdir()
    (d / "name").write_text(label + "\n")
    (d / "max_energy_range_uj").write_text(f"{range_uj}\n")
    if uj is not None:
        (d / "energy_uj").write_text(f"{uj}\n")
    return d


def test_rapl_counts_packages_only_and_through_a_wrap(tmp_path: Path) -> None:
    pkg0 = _zone(tmp_path, "intel-rapl:0", "package-0", 999_000_000)  # 1 J before its wrap
    _zone(tmp_path, "intel-rapl:0:0", "core", 5)  # inside package 0
    pkg1 = _zone(tmp_path, "intel-rapl:1", "package-1", 10_000_000)
    _zone(tmp_path, "intel-rapl:2", "psys", 7)  # the whole platform, packages included
    _zone(tmp_path, "intel-rapl:3", "package-3", None)  # not readable
    zones = rapl_zones(tmp_path)
    assert [z.path.name for z in zones] == ["intel-rapl:0", "intel-rapl:1"]
    clock = Clock()
    probe = RaplProbe(zones, clock)
    probe.begin()
    (pkg0 / "energy_uj").write_text("2000000\n")  # wrapped: 1 J + 2 J
    (pkg1 / "energy_uj").write_text("15000000\n")  # 5 J
    clock.t += 2
    probe.end()
    out = probe.result(items_s=8.0)
    assert out == {"power_w": pytest.approx(4.0), "energy_j_per_item": pytest.approx(0.5)}
    assert isinstance(probe_for(Device("cpu", (0,)), powercap=tmp_path / "none"), Off)


def test_this_machine_probe_is_off_or_reads_rapl() -> None:
    """The real probe here: off without a GPU or NVML; RAPL where the kernel lets it be read."""
    gpu = probe_for(Device("cuda", (0,), 0))
    cpu = probe_for(Device("cpu", (0,)))
    try:
        for p in (gpu, cpu):
            p.begin()
            p.end()
            out = p.result(10.0)
            assert all(v >= 0 for v in out.values())
            assert out or isinstance(p, Off)
    finally:
        gpu.close()
        cpu.close()


class OrderRunner(TimedRunner):
    """Records what the worker calls, in order (and calls nothing heavy)."""

    name = "order"
    backends = ("torch-eager",)
    calls: list[str] = []

    def setup(self) -> None:
        self.calls.append("setup")

    def prepare(self, batch: dict[str, Any]) -> Any:
        self.calls.append("prepare")
        return lambda: self.calls.append("step")

    def predict(self, batch: dict[str, Any]) -> Any:
        raise AssertionError("a re-measurement block does not check accuracy")

    def activate(self) -> None:
        self.calls.append("activate")

    def device_peak_memory_mb(self) -> float | None:
        return None  # nvidia-smi not found, say


class RecordingProbe(telemetry.Probe):
    def __init__(self, calls: list[str], figures: dict[str, float]) -> None:
        self.calls, self.figures = calls, figures

    def begin(self) -> None:
        self.calls.append("begin")

    def end(self) -> None:
        self.calls.append("end")

    def result(self, items_s: float | None = None, items: float | None = None) -> dict[str, float]:
        self.calls.append(f"result({items_s is not None})")
        self.items = items
        return self.figures

    def close(self) -> None:
        self.calls.append("close")


def _worker_run(monkeypatch: pytest.MonkeyPatch, figures: dict[str, float], **spec: Any) -> Any:
    calls: list[str] = []
    OrderRunner.calls = calls
    monkeypatch.setattr(worker, "build", lambda s, c, d, caps: OrderRunner(s, c, d))
    monkeypatch.setattr(worker, "probe_for", lambda d: RecordingProbe(calls, figures))
    s = spec_from_dict(make_spec_dict(**spec))
    device = Device("cuda", tuple(sorted(os.sched_getaffinity(0))), 0)
    result = worker.run_trial(s, {"backend": "torch-eager", "batch_size": 2}, device, {}, block_s=0.02)
    return result, calls


def test_the_worker_times_the_window_after_the_first_call_and_activate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, calls = _worker_run(monkeypatch, {"gpu_peak_memory_mb": 42.0, "power_w": 200.0})
    assert result.ok, result.failure_message
    # The peak reset (activate) follows the first, compiling call; then the warm-up (at least
    # 0.2 s on a GPU); the window begins after both, at the first timed call.
    first = calls.index("step")
    assert calls[:first] == ["setup", "prepare"]
    assert calls[first + 1] == "activate"
    begin = calls.index("begin")
    warm_up = calls[first + 2 : begin]
    assert len(warm_up) >= 3 and set(warm_up) == {"step"}
    assert calls[-3:] == ["end", "result(True)", "close"]
    timed = calls[begin + 1 : calls.index("end")]
    assert set(timed) == {"step"} and result.metrics["n_iterations"] == len(timed)
    assert result.metrics["peak_memory_mb"] == 42.0  # the sampled GPU memory, for every backend
    assert result.metrics["gpu_peak_memory_mb"] == 42.0 and result.metrics["power_w"] == 200.0


def test_a_gpu_trial_without_device_memory_has_no_peak_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = _worker_run(monkeypatch, {})
    assert result.ok and "peak_memory_mb" not in result.metrics  # never the host's RSS
    assert "host_rss_mb" in result.metrics


def test_the_torch_peak_reset_comes_at_activate() -> None:
    from autotuner.backends.torch_runner import TorchRunner

    resets: list[Any] = []
    fake_cuda = type(
        "Cuda",
        (),
        {
            "reset_peak_memory_stats": staticmethod(resets.append),
            # M3: the caching allocator's free blocks go back to the driver, so NVML's window
            # does not keep what compilation reserved.
            "empty_cache": staticmethod(lambda: resets.append("empty_cache")),
        },
    )
    fake_torch = type("Torch", (), {"cuda": fake_cuda, "set_num_threads": staticmethod(lambda n: None)})
    spec = spec_from_dict(make_spec_dict())
    runner = TorchRunner(spec, {"backend": "torch-compile", "device": "cuda"}, Device("cuda", (0,), 0))
    runner.torch, runner.dev = fake_torch, "cuda:0"
    runner.activate()
    assert resets == ["empty_cache", "cuda:0"]


COST = {"usd_per_hour": 2.1}


def _spec_error(tmp_path: Path, **overrides: Any) -> str:
    path = write_spec(tmp_path, **overrides)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value)


def test_cost_metric_needs_the_price(tmp_path: Path) -> None:
    need = (
        "usd_per_million_items is computed from the machine's price; give it as cost: {usd_per_hour: NUMBER}"
    )
    objectives = [{"metric": "usd_per_million_items", "direction": "minimize"}]
    assert _spec_error(tmp_path, objectives=objectives).endswith(f"objectives[0].metric: {need}")
    assert _spec_error(tmp_path, constraints=["usd_per_million_items <= 1"]).endswith(
        f"constraints[0]: {need}"
    )
    pick = {"tie_break": ["min:usd_per_million_items"]}
    assert _spec_error(tmp_path, pick=pick).endswith(f"pick.tie_break[0]: {need}")
    assert _spec_error(tmp_path, cost={"usd_per_hour": -1}, objectives=objectives).endswith(
        "cost.usd_per_hour: must be a positive number of US dollars per hour, got -1"
    )
    assert _spec_error(tmp_path, cost={"usd_per_hour": "cheap"}).endswith(
        "cost.usd_per_hour: must be a number, got a string"
    )
    assert _spec_error(tmp_path, cost={"usd_hour": 2}).endswith(
        "cost.usd_per_hour: required field is missing"
    )
    assert _spec_error(tmp_path, cost={"usd_per_hour": 2, "usd_hour": 2}).endswith(
        "cost.usd_hour: unknown field; allowed: usd_per_hour"
    )
    spec = load_spec(
        write_spec(tmp_path, cost=COST, objectives=objectives, constraints=["usd_per_million_items <= 9"])
    )
    assert spec.cost is not None and spec.cost.usd_per_hour == 2.1
    assert load_spec(write_spec(tmp_path)).fingerprint() == spec_from_dict(make_spec_dict()).fingerprint()


def test_every_completed_trial_stores_its_cost(in_tmp: Path) -> None:
    path = write_spec(
        in_tmp,
        space={"backend": "torch-eager", "batch_size": [1, 4], "threads": [1]},
        objectives=[{"metric": "usd_per_million_items", "direction": "minimize"}],
        constraints=["usd_per_million_items <= 1000000"],
        cost=COST,
        budget={"trials": 2},
        sampler={"type": "grid"},
        pick={"rounds": 0},
        measurement=FAST_MEASUREMENT,
    )
    outcome = run(path, progress=Progress(quiet=True))
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        expected = 2.1 / 3600 / t.user_attrs["throughput_items_s"] * 1e6
        assert t.user_attrs["usd_per_million_items"] == pytest.approx(expected)
        assert t.values == [pytest.approx(expected)]
    assert outcome.best_config_path is not None
    best = yaml.safe_load(outcome.best_config_path.read_text(encoding="utf-8"))
    assert "usd_per_million_items" in best["metrics"]
    page = (in_tmp / "reports" / "t.html").read_text(encoding="utf-8")
    assert "usd_per_million_items" in page
