"""The smaller findings of the second GPU review (L1-L10): ORT's newer CUDA-graph refusal text,
the TensorRT cache keyed on TensorRT and the GPU model and one shared timing cache, int8 on the
CUDA provider said to be simulated, CUDA and NVML agreeing on GPU numbers, every GPU of a
multi-GPU command sampled, the baseline taken once a killed trial's memory is freed, and the
sampler's period. NVML is faked; the rest is the real code."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from helpers import make_spec_dict
from test_telemetry import FakeNvml, MiB

from autotuner.api import spec_from_dict
from autotuner.backends.onnxruntime.config import CUDA, TENSORRT
from autotuner.backends.onnxruntime.options import (
    FolderLock,
    engine_folder_name,
    gpu_model,
    provider_options,
    refusal_of,
    timing_folder_name,
)
from autotuner.backends.onnxruntime.runner import INT8_ON_CUDA, OnnxRuntimeRunner
from autotuner.execution.process import worker_env
from autotuner.measure import telemetry
from autotuner.runners.base import Device

SPEC = spec_from_dict(make_spec_dict())
SHAPES = {"input_ids": (4, 16), "attention_mask": (4, 16)}
TRT = {"backend": "onnxruntime-tensorrt", "precision": "fp16", "tf32": True, "batch_size": 4}


# --- L1 -------------------------------------------------------------------------------------------


def test_the_graph_capture_refusal_of_newer_ort_is_unsupported() -> None:
    msg = (
        "This session cannot use the graph capture feature as requested by the user as the model "
        "has control flow nodes or has not been partitioned to the CUDAExecutionProvider"
    )
    reason = refusal_of(msg, CUDA)
    assert reason is not None and reason.startswith("cuda_graph") and "graph capture" in reason
    assert refusal_of("Failed to allocate memory for requested buffer", CUDA) is None


# --- L3, L4 ---------------------------------------------------------------------------------------


def test_an_engine_folder_differs_by_tensorrt_version_and_gpu_model() -> None:
    h100 = {"tensorrt": "tensorrt-cu13 10.16.1.11", "gpu": "NVIDIA H100 80GB HBM3"}
    names = {
        engine_folder_name("a" * 64, TRT, SHAPES, "1.31.1", None, h100),
        engine_folder_name("a" * 64, TRT, SHAPES, "1.31.1", None, {**h100, "gpu": "NVIDIA H200"}),
        engine_folder_name(
            "a" * 64, TRT, SHAPES, "1.31.1", None, {**h100, "tensorrt": "tensorrt-cu13 10.13.3.9"}
        ),
    }
    assert len(names) == 3
    timing = {
        timing_folder_name(h100, "1.31.1"),
        timing_folder_name({**h100, "gpu": "NVIDIA H200"}, "1.31.1"),
    }
    assert len(timing) == 2


def test_gpu_model_follows_cuda_visible_devices() -> None:
    rows = [["0", "GPU-aaa", "NVIDIA H100 80GB HBM3"], ["1", "GPU-bbb", "NVIDIA H200"]]
    assert gpu_model(rows, None, 1) == "NVIDIA H200"
    assert gpu_model(rows, "1", 0) == "NVIDIA H200"
    assert gpu_model(rows, "GPU-aaa", 0) == "NVIDIA H100 80GB HBM3"
    assert gpu_model(None, None, 0) is None and gpu_model(rows, "7", 0) is None


def test_the_timing_cache_is_shared_apart_from_the_engine_folder(tmp_path: Path) -> None:
    options = dict(provider_options(TRT, 0, tmp_path / "engine", SHAPES, None, tmp_path / "timing"))
    trt = options[TENSORRT]
    assert trt["trt_engine_cache_path"] == str(tmp_path / "engine")
    assert trt["trt_timing_cache_path"] == str(tmp_path / "timing")
    own = dict(provider_options(TRT, 0, tmp_path / "engine", SHAPES))[TENSORRT]
    assert own["trt_timing_cache_path"] == str(tmp_path / "engine")


def _hold(folder: str, ready: Any, done: Any) -> None:
    lock = FolderLock(Path(folder))
    assert lock.acquire(wait_s=5)
    ready.set()
    done.wait(10)
    lock.release()


def test_one_session_at_a_time_holds_the_timing_cache(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    other.start()
    try:
        assert ready.wait(30)
        assert not FolderLock(tmp_path).acquire(wait_s=0.3, poll_s=0.05)  # the other holds it
        done.set()
        other.join(10)
        mine = FolderLock(tmp_path)
        assert mine.acquire(wait_s=5)
        mine.release()
    finally:
        done.set()
        other.join(5)


# --- L5 -------------------------------------------------------------------------------------------


def test_int8_on_the_cuda_provider_is_said_to_be_simulated() -> None:
    runner = OnnxRuntimeRunner(
        SPEC, {"backend": "onnxruntime-cuda", "precision": "int8"}, Device("cuda", (0,), 0)
    )
    runner.provider, runner.quantization = CUDA, {"calibration": "minmax"}
    assert runner.trial_info()["int8_note"] == INT8_ON_CUDA
    runner.provider = TENSORRT
    assert "int8_note" not in runner.trial_info()


# --- L6 -------------------------------------------------------------------------------------------


def test_workers_number_gpus_as_nvml_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert worker_env(None)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # the user's own choice is kept
    assert worker_env(2)["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"


# --- L7 -------------------------------------------------------------------------------------------


def test_a_trial_holding_two_gpus_reads_both(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = FakeNvml()  # each GPU reads the same state: 1000 MiB used, 100 W
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    probe = telemetry.probe_for(Device("cuda", (0,), 0), nvml=nv, interval_s=None, settle_s=0)
    assert nv.opened == [2, 5]
    assert probe.baseline == 2 * 1000 * MiB
    nv.state["used"] = 3000 * MiB
    probe.begin()
    nv.state["mj"] = 400_000
    probe.end()
    out = probe.result()
    probe.close()
    assert out["gpu_peak_memory_mb"] == pytest.approx(4000)  # (3000 - 1000) on each
    assert nv.shut == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    single = telemetry.probe_for(Device("cuda", (0,), 0), nvml=nv, interval_s=None, settle_s=0)
    assert nv.opened[-1] == 3 and not isinstance(single.gpu, telemetry.GpuSet)
    single.close()


# --- L8 -------------------------------------------------------------------------------------------


class _Freeing:
    """A GPU whose memory a killed trial's processes are still returning."""

    def __init__(self, readings: list[int]) -> None:
        self.readings = readings

    def read(self, t: float) -> telemetry.Sample:
        used = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        return telemetry.Sample(t, used_bytes=used)

    def close(self) -> None: ...


def test_the_baseline_waits_until_freed_memory_settles() -> None:
    slept: list[float] = []
    gpu = _Freeing([9000 * MiB, 6000 * MiB, 3000 * MiB, 1000 * MiB, 1000 * MiB])
    probe = telemetry.GpuProbe(gpu, interval_s=None, settle_s=10, sleep=slept.append)
    assert probe.baseline == 1000 * MiB and len(slept) == 4
    capped = telemetry.GpuProbe(
        _Freeing([10**12 - i * 10**9 for i in range(200)]), None, settle_s=0.5, sleep=slept.append
    )
    assert capped.settled_s == pytest.approx(0.5)  # bounded


# --- L9 -------------------------------------------------------------------------------------------


def test_the_sampler_leaves_the_pinned_core_to_the_trial() -> None:
    import inspect

    assert telemetry.SAMPLE_INTERVAL_S >= 0.05
    assert (
        inspect.signature(telemetry.probe_for).parameters["interval_s"].default == telemetry.SAMPLE_INTERVAL_S
    )


# --- L2 -------------------------------------------------------------------------------------------


def test_torch_compile_on_cuda_without_a_c_compiler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from autotuner.backends.torch_runner import TorchRunner
    from autotuner.execution.capabilities import _static, c_compiler

    caps = {
        "cpu_cores": 2,
        "cuda_devices": 1,
        "cuda_bf16": True,
        "c_compiler": "/usr/bin/cc",
        "python_headers": True,
    }
    config = {"backend": "torch-compile", "device": "cuda"}
    assert TorchRunner.check(SPEC, config, caps) is None
    reason = TorchRunner.check(SPEC, config, {**caps, "c_compiler": None})
    assert reason is not None and "C compiler" in reason
    reason = TorchRunner.check(SPEC, config, {**caps, "python_headers": False})
    assert reason is not None and "headers" in reason
    assert TorchRunner.check(SPEC, {**config, "backend": "torch-eager"}, {**caps, "c_compiler": None}) is None
    # The real probe: PATH without a compiler and no CC finds none.
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert c_compiler() is None and _static()["c_compiler"] is None
