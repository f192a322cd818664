"""Device telemetry around one trial: GPU memory, utilisation, clocks, power and energy (NVML), or
CPU package energy (RAPL). A probe that cannot read anything is off and adds no metric.

    probe = probe_for(device)   # before setup: the memory baseline
    ...setup, first call...
    probe.begin()               # the timed window
    ...timed iterations...
    probe.end()
    metrics.update(probe.result(throughput_items_s))
    probe.close()

A GPU probe samples its GPU every `interval_s` on a background thread; `begin` and `end` take a
sample of their own, so the window is bounded by real readings. The definitions are in
autotuner.metrics (gpu_peak_memory_mb, gpu_util_pct, sm_clock_mhz, power_w, energy_j_per_item,
gpu_throttle).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotuner.runners.base import Device

POWERCAP = Path("/sys/class/powercap")
# The sampler's period: six NVML calls a sample share the trial's pinned cores with its launch
# loop, so not faster than this (the energy counter, which power_w reads, needs no sampling).
SAMPLE_INTERVAL_S = 0.05
# Before the baseline: memory a killed trial's grandchildren (a vLLM engine) still hold is being
# freed when it keeps falling; wait (bounded) until two readings agree within this.
SETTLE_TOLERANCE_BYTES = 16 * 2**20
SETTLE_MAX_S = 10.0
# NVML's clock-event (throttle) reason bits that mean nothing is slowing the GPU down.
_IDLE_BIT = 0x1


@dataclass(frozen=True)
class Sample:
    """One reading of a GPU; None where the GPU does not report that figure."""

    t: float
    used_bytes: int | None = None
    util_pct: float | None = None
    sm_clock_mhz: float | None = None
    power_w: float | None = None
    energy_j: float | None = None  # the driver's running total (since it was loaded)
    throttle: int | None = None


class NvmlGpu:
    """One GPU through NVML (`pynvml`, from the nvidia-ml-py package)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml, self.handle = nvml, handle
        self.throttle_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )

    @classmethod
    def open(cls, cuda_index: int, nvml: Any = None) -> tuple[NvmlGpu | None, str]:
        """The GPU the trial's CUDA device `cuda_index` is, or None and why not."""
        if nvml is None:
            try:
                import pynvml as nvml  # noqa: PLC0415 (heavy: pynvml)
            except ImportError:
                return None, "no NVML: pip install 'autotune[gpu]' (nvidia-ml-py) for GPU telemetry"
        try:
            nvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - no driver, no GPU: telemetry is off
            return None, f"NVML did not start ({type(e).__name__}: {e})"
        try:
            return cls(nvml, _handle(nvml, cuda_index)), ""
        except Exception as e:  # noqa: BLE001
            nvml.nvmlShutdown()
            return None, f"NVML has no GPU for CUDA device {cuda_index} ({type(e).__name__}: {e})"

    def read(self, t: float) -> Sample:
        nv, h = self.nvml, self.handle
        used = _try(lambda: int(nv.nvmlDeviceGetMemoryInfo(h).used))
        util = _try(lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
        sm = _try(lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)))
        power = _try(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3)
        energy = _try(lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3)
        fn = self.throttle_fn
        throttle = _try(lambda: int(fn(h))) if fn is not None else None
        return Sample(t, used, util, sm, power, energy, throttle)

    def close(self) -> None:
        _try(self.nvml.nvmlShutdown)


def _handle(nvml: Any, cuda_index: int) -> Any:
    """NVML counts every GPU; CUDA counts those CUDA_VISIBLE_DEVICES shows (Ray sets it per trial).
    NVML numbers GPUs in PCI bus order, as CUDA does with CUDA_DEVICE_ORDER=PCI_BUS_ID."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index)
    entry = visible[cuda_index]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    return nvml.nvmlDeviceGetHandleByUUID(entry)


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends: the figure is absent
        return None


class Probe:
    """Off: measures nothing, adds no metric."""

    why_off: str = ""

    def begin(self) -> None: ...

    def end(self) -> None: ...

    def result(self, items_s: float | None = None, items: float | None = None) -> dict[str, float]:
        """The window's figures. energy_j_per_item is the window's energy over `items` (the items
        run inside it) where given, else power_w / items_s (a rate over the same window)."""
        return {}

    def close(self) -> None: ...


class Off(Probe):
    def __init__(self, why: str) -> None:
        self.why_off = why


class GpuProbe(Probe):
    """Samples one GPU from construction (the baseline) to close."""

    def __init__(
        self,
        gpu: Any,
        interval_s: float | None = SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
        settle_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.gpu, self.clock = gpu, clock
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.window: tuple[int, int] | None = None
        self._begun: int | None = None
        self.settled_s = settle(gpu, settle_s, sleep) if settle_s > 0 else 0.0
        self.baseline = self.take().used_bytes
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if interval_s:
            self.thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
            self.thread.start()

    def _run(self, interval_s: float) -> None:
        while not self.stop.wait(interval_s):
            self.take()

    def take(self) -> Sample:
        s = self.gpu.read(self.clock())
        with self.lock:
            self.samples.append(s)
        return s

    def begin(self) -> None:
        self.take()
        with self.lock:
            self._begun = len(self.samples) - 1

    def end(self) -> None:
        self.take()
        with self.lock:
            if self._begun is not None:
                self.window = (self._begun, len(self.samples) - 1)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=1)
            self.thread = None
        self.gpu.close()

    def result(self, items_s: float | None = None, items: float | None = None) -> dict[str, float]:
        with self.lock:
            samples = list(self.samples)
        if self.window is None:  # a workload runner: its run as a whole, memory only
            return _memory(samples, self.baseline)
        lo, hi = self.window
        out = _memory(samples[lo : hi + 1], self.baseline)
        out.update(window_figures(samples[lo : hi + 1], items_s, items))
        return out


def settle(gpu: Any, max_s: float, sleep: Callable[[float], None] = time.sleep, step_s: float = 0.1) -> float:
    """Wait while the GPU's used memory keeps falling (a killed trial's processes still freeing
    it), at most max_s; the seconds waited."""
    waited, last = 0.0, gpu.read(0.0).used_bytes
    while last is not None and waited < max_s:
        sleep(step_s)
        waited += step_s
        now = gpu.read(waited).used_bytes
        if now is None or abs(last - now) <= SETTLE_TOLERANCE_BYTES:
            break
        last = now
    return waited


class GpuSet:
    """Every GPU a trial holds (a tensor-parallel program's), read as one: memory, power and
    energy summed, utilisation and SM clock averaged, throttle reasons OR-ed."""

    def __init__(self, gpus: list[Any]) -> None:
        self.gpus = gpus

    def read(self, t: float) -> Sample:
        ss = [g.read(t) for g in self.gpus]

        def total(name: str) -> Any:
            vs = [getattr(s, name) for s in ss]
            return None if any(v is None for v in vs) else sum(vs)

        reasons = [s.throttle for s in ss if s.throttle is not None]
        mask = 0
        for r in reasons:
            mask |= r
        return Sample(
            t,
            total("used_bytes"),
            _mean([s.util_pct for s in ss]),
            _mean([s.sm_clock_mhz for s in ss]),
            total("power_w"),
            total("energy_j"),
            mask if reasons else None,
        )

    def close(self) -> None:
        for g in self.gpus:
            g.close()


def _memory(samples: list[Sample], baseline: int | None) -> dict[str, float]:
    used = [s.used_bytes for s in samples if s.used_bytes is not None]
    if not used or baseline is None:
        return {}
    return {"gpu_peak_memory_mb": max(0, max(used) - baseline) / 2**20}


def _mean(values: list[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return sum(vs) / len(vs) if vs else None


def window_figures(
    samples: list[Sample], items_s: float | None, items: float | None = None
) -> dict[str, float]:
    """Utilisation, SM clock, power, energy per item and throttle reasons over a timed window
    (its samples, the first and last taken at its bounds). Energy per item is the window's energy
    over the items run in it when `items` is given: power_w / items_s would scale it by busy over
    wall time where items_s counts the steps' own time only."""
    out: dict[str, float] = {}
    for name, value in (
        ("gpu_util_pct", _mean([s.util_pct for s in samples])),
        ("sm_clock_mhz", _mean([s.sm_clock_mhz for s in samples])),
    ):
        if value is not None:
            out[name] = value
    power = mean_power_w(samples)
    if power is not None:
        out["power_w"] = power
        span = samples[-1].t - samples[0].t if len(samples) >= 2 else 0.0
        if items and items > 0 and span > 0:
            out["energy_j_per_item"] = power * span / items
        elif items_s and items_s > 0:
            out["energy_j_per_item"] = power / items_s
    reasons = [s.throttle for s in samples if s.throttle is not None]
    if reasons:
        mask = 0
        for r in reasons:
            mask |= r
        out["gpu_throttle"] = float(mask & ~_IDLE_BIT)
    return out


def mean_power_w(samples: list[Sample]) -> float | None:
    """Mean power over the samples' span: the driver's energy counter difference where it counts,
    else the sampled power integrated (trapezoids) over time; the one sample's power if only one."""
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        span = last.t - first.t
        if span > 0 and first.energy_j is not None and last.energy_j is not None:
            return (last.energy_j - first.energy_j) / span
        pts = [(s.t, s.power_w) for s in samples if s.power_w is not None]
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            area = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False))
            return area / (pts[-1][0] - pts[0][0])
    return _mean([s.power_w for s in samples])


class RaplZone:
    """One package's energy counter under /sys/class/powercap (µJ, wrapping at its range)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.range_uj = int((path / "max_energy_range_uj").read_text())

    def read(self) -> int:
        return int((self.path / "energy_uj").read_text())

    def joules(self, before: int, after: int) -> float:
        """Energy between two readings; a counter that wrapped once is counted through its range."""
        delta = after - before
        if delta < 0:
            delta += self.range_uj
        return delta / 1e6


def rapl_zones(root: Path = POWERCAP) -> list[RaplZone]:
    """The readable package zones (intel-rapl:N; not their core/uncore subzones, which the package
    includes, nor psys, which includes the packages)."""
    zones = []
    for d in sorted(root.glob("intel-rapl:*")):
        if d.name.count(":") != 1:
            continue
        try:
            if (d / "name").exists() and (d / "name").read_text().strip() == "psys":
                continue
            zone = RaplZone(d)
            zone.read()
        except (OSError, ValueError):
            continue  # unreadable (root only since CVE-2020-8694) or not a counter
        zones.append(zone)
    return zones


class RaplProbe(Probe):
    """CPU package energy over the timed window (every core of the package, not only the trial's)."""

    def __init__(self, zones: list[RaplZone], clock: Callable[[], float] = time.perf_counter) -> None:
        self.zones, self.clock = zones, clock
        self.start: tuple[float, list[int]] | None = None
        self.joules: float | None = None
        self.span = 0.0

    def _read(self) -> tuple[float, list[int]]:
        return self.clock(), [z.read() for z in self.zones]

    def begin(self) -> None:
        self.start = self._read()

    def end(self) -> None:
        if self.start is None:
            return
        (t0, a), (t1, b) = self.start, self._read()
        self.joules = sum(z.joules(x, y) for z, x, y in zip(self.zones, a, b, strict=True))
        self.span = t1 - t0

    def result(self, items_s: float | None = None, items: float | None = None) -> dict[str, float]:
        if self.joules is None or self.span <= 0:
            return {}
        power = self.joules / self.span
        out = {"power_w": power}
        if items and items > 0:
            out["energy_j_per_item"] = self.joules / items
        elif items_s and items_s > 0:
            out["energy_j_per_item"] = power / items_s
        return out


def probe_for(
    device: Device,
    *,
    nvml: Any = None,
    powercap: Path = POWERCAP,
    interval_s: float | None = SAMPLE_INTERVAL_S,
    settle_s: float = SETTLE_MAX_S,
) -> Probe:
    """The trial's probe, started: NVML on its GPU (on every GPU the executor showed it, when it
    holds several), RAPL on a CPU trial, else off."""
    if device.kind == "cuda":
        shown = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        indices = list(range(len(shown))) if len(shown) > 1 else [int(device.cuda_index or 0)]
        opened = [NvmlGpu.open(i, nvml) for i in indices]
        gpus = [g for g, _ in opened if g is not None]
        if len(gpus) < len(opened):
            for g in gpus:
                g.close()
            return Off(next(why for g, why in opened if g is None))
        gpu = gpus[0] if len(gpus) == 1 else GpuSet(gpus)
        return GpuProbe(gpu, interval_s, settle_s=settle_s)
    zones = rapl_zones(powercap)
    return RaplProbe(zones) if zones else Off(f"no readable RAPL energy counter under {powercap}")
