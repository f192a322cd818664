"""The ONNX Runtime findings of the second GPU review (reviews/gpu-2026-12-01.md): the CPU-share
rule and the scalar shape arithmetic ORT keeps on the CPU (H1), the serving accuracy check's
own binding (H2), the GPU libraries loaded and each provider's load probed (H4), the TensorRT
profile in serving (M1), the refusal texts (L1) and the engine cache keys (L3, L4).

Real parts where the logic allows: the built-in model exported by torch, real onnxruntime CPU
sessions and their real profiles; what only a GPU has (device buffers and IO binding, a
TensorRT or CUDA provider that loads) is faked, and the CUDA tests skip with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_spec_dict

from autotuner.api import spec_from_dict
from autotuner.backends.onnxruntime.config import CPU, CUDA, TENSORRT
from autotuner.backends.onnxruntime.options import node_placement
from autotuner.backends.onnxruntime.runner import OnnxRuntimeRunner
from autotuner.runners.base import Device

SPEC = spec_from_dict(make_spec_dict())


def _batch(n: int, seed: int | None = None) -> dict[str, np.ndarray]:
    from autotuner.models.builtins import model_inputs
    from autotuner.models.inputs import make_inputs

    return make_inputs(model_inputs(SPEC), n, SPEC.data_seed if seed is None else seed)


def _cpu_session(profile_prefix: Path | None = None) -> Any:
    import onnxruntime as ort

    from autotuner.models.artifacts import onnx_path

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(onnx_path(SPEC, "fp32")), so, providers=[CPU])


# --- H1: scalar shape arithmetic on the CPU is no CPU share -------------------------------------


def _event(op: str, provider: str, out_type: str, dims: list[int]) -> dict[str, Any]:
    return {
        "cat": "Node",
        "name": f"/{op}_0_kernel_time",
        "args": {"op_name": op, "provider": provider, "output_type_shape": [{out_type: dims}]},
    }


def test_float_scalars_on_the_cpu_are_listed_apart_and_not_counted() -> None:
    events = [
        _event("Shape", CPU, "int64", [4]),
        _event("Cast", CPU, "float", [1]),
        _event("Sqrt", CPU, "float", [1]),
        _event("Div", CPU, "float", []),  # a rank-0 scalar
        _event("Mul", CPU, "float", [8, 8]),  # 64 elements: still shape-sized
        _event("MatMul", CUDA, "float", [4, 16, 64]),
    ]
    placed = node_placement(events)
    assert placed["cpu_compute"] == []
    assert placed["cpu_scalars"] == ["Cast", "Sqrt", "Div", "Mul"]
    assert placed["by_provider"] == {CPU: 5, CUDA: 1}
    # One element more than the exemption, or a model's real tensor, is a CPU share.
    big = node_placement(
        [_event("Mul", CPU, "float", [65]), _event("LayerNormalization", CPU, "float16", [4, 16, 64])]
    )
    assert big["cpu_compute"] == ["Mul", "LayerNormalization"] and big["cpu_scalars"] == []
    # Small out, large in: a head computing logits from activations is a CPU share.
    gemm = _event("Gemm", CPU, "float", [4, 2])
    gemm["args"]["input_type_shape"] = [{"float": [4, 64]}, {"float": [2, 64]}]
    assert node_placement([gemm])["cpu_compute"] == ["Gemm"]


def test_the_builtin_exports_its_attention_scale_as_scalars_a_real_profile_exempts(tmp_path: Path) -> None:
    """The torch-exported built-in computes sqrt(head_dim) from Shape in every layer; on a real
    (CPU) profile those nodes are 1-element floats, exempted, while its MatMuls are counted."""
    session = _cpu_session(tmp_path / "prof")
    session.run(None, _batch(4))
    events = json.loads(Path(session.end_profiling()).read_text())
    placed = node_placement(events)
    assert "Sqrt" in placed["cpu_scalars"]
    assert "Sqrt" not in placed["cpu_compute"] and "MatMul" in placed["cpu_compute"]
    # The exemption takes only what reads and writes scalars: the classifier's Gemm writes 8
    # floats from a [4, 64] activation and is compute.
    assert set(placed["cpu_scalars"]) <= {"Cast", "Sqrt", "Div", "Mul"}
    assert "Gemm" in placed["cpu_compute"] and len(placed["cpu_scalars"]) >= 2


# --- H2: the accuracy check runs its own binding --------------------------------------------------


class _DeviceValue:
    """Stands for an OrtValue on the GPU: a fixed-shape buffer (update_inplace keeps the shape)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = np.array(arr)

    def update_inplace(self, arr: np.ndarray) -> None:
        if arr.shape != self.arr.shape:
            raise ValueError(f"update_inplace: shape {arr.shape} into a buffer of {self.arr.shape}")
        self.arr[...] = arr

    @classmethod
    def ortvalue_from_numpy(cls, arr: np.ndarray, device: str, index: int) -> _DeviceValue:
        assert device == "cuda"
        return cls(arr)


class _Binding:
    def __init__(self) -> None:
        self.inputs: dict[str, _DeviceValue] = {}
        self.outputs: list[np.ndarray] = []

    def bind_ortvalue_input(self, name: str, value: _DeviceValue) -> None:
        self.inputs[name] = value

    def bind_output(self, name: str, device: str, index: int) -> None:
        assert device == "cuda"

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return self.outputs

    def synchronize_outputs(self) -> None: ...


class _GpuSession:
    """A real CPU session of the model behind the GPU-only IO binding calls."""

    def __init__(self, session: Any) -> None:
        self.real = session

    def io_binding(self) -> _Binding:
        return _Binding()

    def run_with_iobinding(self, binding: _Binding) -> None:
        binding.outputs = self.real.run(None, {k: v.arr for k, v in binding.inputs.items()})

    def get_outputs(self) -> Any:
        return self.real.get_outputs()

    def get_inputs(self) -> Any:
        return self.real.get_inputs()


def _faked_gpu_runner() -> OnnxRuntimeRunner:
    from types import SimpleNamespace

    config = {"backend": "onnxruntime-cuda", "precision": "fp32"}
    runner = OnnxRuntimeRunner(SPEC, config, Device("cuda", (0,), 0))
    runner.provider = CUDA
    runner.ort = SimpleNamespace(OrtValue=_DeviceValue)
    runner.session = _GpuSession(_cpu_session())
    runner.binding, runner._bound = None, {}
    runner.placement = {"by_provider": {CUDA: 1}, "cpu_compute": [], "cpu_scalars": []}  # profiled
    return runner


def test_serving_accuracy_runs_its_own_binding_not_the_last_served_batch() -> None:
    runner = _faked_gpu_runner()
    steps = {n: runner.prepare(_batch(n, seed=100 + n)) for n in (4, 1)}  # serving binds 1..max
    steps[1]()  # the last served batch had one row: runner.binding is size 1's
    accuracy = _batch(4)
    out = runner.predict(accuracy)
    expected = _cpu_session().run(None, accuracy)[0]
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # A size no step served is bound on first use, and the step's bindings stay as they were.
    assert runner.predict(_batch(3)).shape[0] == 3
    steps[1]()
    one_row = next(binding for key, (binding, _, _) in runner._bound.items() if key[0][1][0] == 1)
    assert runner.binding is one_row


# --- on a GPU ----------------------------------------------------------------------------------


def _ort_gpu(provider: str) -> bool:
    try:
        import onnxruntime as ort
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and provider in ort.get_available_providers()


@pytest.mark.skipif(not _ort_gpu(CUDA), reason="no CUDA device with onnxruntime's CUDA provider here")
def test_the_builtin_on_ort_cuda_keeps_only_scalars_on_the_cpu(caps: dict) -> None:
    from autotuner.measure.worker import build

    config = {"backend": "onnxruntime-cuda", "precision": "fp32", "batch_size": 4}
    runner = build(SPEC, config, Device("cuda", (0,), 0), caps)
    runner.setup()
    runner.prepare(_batch(4))
    placed = runner.trial_info()["node_placement"]
    assert placed["cpu_compute"] == [] and placed["by_provider"].get(CUDA, 0) > 0
    runner.teardown()


@pytest.mark.skipif(not _ort_gpu(CUDA), reason="no CUDA device with onnxruntime's CUDA provider here")
def test_ort_cuda_serving_accuracy_after_a_one_row_batch(caps: dict) -> None:
    from autotuner.measure.worker import build

    config = {"backend": "onnxruntime-cuda", "precision": "fp32", "batch_size": 4}
    runner = build(SPEC, config, Device("cuda", (0,), 0), caps)
    runner.setup()
    runner.prepare(_batch(4))
    runner.prepare(_batch(1, seed=7))()
    out = runner.predict(_batch(4))
    np.testing.assert_allclose(out, _cpu_session().run(None, _batch(4))[0], rtol=1e-3, atol=1e-3)
    runner.teardown()


# --- H4: the GPU libraries are loaded, and each provider's load is probed --------------------


def _fake_build(monkeypatch: pytest.MonkeyPatch, providers: list[str]) -> Any:
    """The real onnxruntime (CPU build) claiming to be built with the given providers."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(providers))
    return ort


def test_a_provider_built_in_but_not_loading_is_recorded_with_what_ort_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from autotuner.runners.gpu_libraries import provider_load_probe

    real = provider_load_probe()  # this machine: CPU only, nothing to explain
    assert CPU in real["ort_providers_loaded"] and real["ort_provider_errors"] == {}
    ort = _fake_build(monkeypatch, [TENSORRT, CUDA, CPU])
    probed = provider_load_probe(ort)
    assert probed["ort_providers_loaded"] == [CPU]  # a real session got neither GPU provider
    assert set(probed["ort_provider_errors"]) == {CUDA, TENSORRT}
    assert "CUDAExecutionProvider" in probed["ort_provider_errors"][CUDA]  # ORT's own words


def test_check_refuses_a_provider_that_does_not_load_with_the_cause() -> None:
    caps = {
        "cpu_cores": 4,
        "cuda_devices": 1,
        "ort_providers": [TENSORRT, CUDA, CPU],
        "ort_providers_loaded": [CUDA, CPU],
        "ort_provider_errors": {TENSORRT: "libnvinfer.so.10: cannot open shared object file"},
    }
    config = {"backend": "onnxruntime-tensorrt", "precision": "fp32", "tf32": True}
    reason = OnnxRuntimeRunner.check(SPEC, config, caps)
    assert reason is not None and "does not load" in reason and "libnvinfer.so.10" in reason
    assert (
        OnnxRuntimeRunner.check(SPEC, {**config, "backend": "onnxruntime-cuda", "tf32": False}, caps) is None
    )
    # Under Ray the providers are the GPU node's and the load probe the driver's (CPU only, it
    # tried no GPU provider): nothing is refused for a load nobody tried.
    merged = {**caps, "ort_providers_loaded": [CPU], "ort_provider_errors": {}}
    assert OnnxRuntimeRunner.check(SPEC, config, merged) is None
    # Caps from before the load probe: the built-in list decides, as before.
    old = {k: v for k, v in caps.items() if k not in ("ort_providers_loaded", "ort_provider_errors")}
    assert OnnxRuntimeRunner.check(SPEC, {k: v for k, v in config.items()}, old) is None


def test_the_libraries_are_preloaded_once_where_onnxruntime_has_a_gpu_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from autotuner.runners import gpu_libraries

    calls: list[str] = []
    gpu_ort = SimpleNamespace(
        get_available_providers=lambda: [CUDA, CPU], preload_dlls=lambda: calls.append("x")
    )
    monkeypatch.setattr(gpu_libraries, "_loaded", None)
    assert "preload_dlls()" in gpu_libraries.load_ort_libraries(gpu_ort)
    gpu_libraries.load_ort_libraries(gpu_ort)
    assert calls == ["x"]  # once a process
    monkeypatch.setattr(gpu_libraries, "_loaded", None)
    cpu_ort = SimpleNamespace(get_available_providers=lambda: [CPU], preload_dlls=lambda: calls.append("y"))
    assert "nothing to load" in gpu_libraries.load_ort_libraries(cpu_ort) and calls == ["x"]
    monkeypatch.setattr(gpu_libraries, "_loaded", None)
    old_ort = SimpleNamespace(get_available_providers=lambda: [CUDA, CPU])  # onnxruntime < 1.21
    assert "torch imported first" in gpu_libraries.load_ort_libraries(old_ort)


def test_tensorrt_libraries_of_the_wheel_are_loaded_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import sys

    from autotuner.runners.gpu_libraries import _load_tensorrt_libs

    assert _load_tensorrt_libs() is None  # no tensorrt wheel here
    libm = next(
        (p for p in (Path("/lib/x86_64-linux-gnu/libm.so.6"), Path("/usr/lib64/libm.so.6")) if p.exists()),
        None,
    )
    if libm is None:
        pytest.skip("no libm.so.6 to stand in for libnvinfer")
    folder = tmp_path / "tensorrt_libs"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    shutil.copy(libm, folder / "libnvinfer.so.10")  # a real shared object under TensorRT's name
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt_libs", raising=False)
    said = _load_tensorrt_libs()
    assert said is not None and "libnvinfer.so.10" in said and str(folder) in said


def test_the_probe_records_the_providers_that_load(caps: dict) -> None:
    assert CPU in caps["ort_providers_loaded"] and "ort_provider_errors" in caps
    assert "ort_libraries" in caps


# --- M1: TensorRT in serving: one engine for batch 1..max_batch_size ---------------------------


def _serving_spec() -> Any:
    return spec_from_dict(
        make_spec_dict(
            scenario="serving",
            serving={"rate_rps": 100, "duration_s": 0.6, "slo_p95_ms": 50},
            space={"backend": "onnxruntime-tensorrt", "max_batch_size": [8], "tf32": [True]},
            objectives=[{"metric": "request_latency_p95_ms", "direction": "minimize"}],
        )
    )


class _TrtSession:
    """What a TensorRT session reports (the GPU-only part): the providers it was created with."""

    made: list[list[tuple[str, dict[str, str]]]] = []

    def __init__(self, path: str, so: Any, providers: list[tuple[str, dict[str, str]]]) -> None:
        self.providers = providers
        _TrtSession.made.append(providers)

    def get_providers(self) -> list[str]:
        return [name for name, _ in self.providers]


def test_a_serving_tensorrt_session_gets_one_profile_for_every_batch_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime as ort

    spec = _serving_spec()
    monkeypatch.setattr(ort, "InferenceSession", _TrtSession)
    _TrtSession.made = []
    config = {"backend": "onnxruntime-tensorrt", "precision": "fp32", "tf32": True, "max_batch_size": 8}
    runner = OnnxRuntimeRunner(spec, config, Device("cuda", (0,), 0))
    runner.setup()  # the real setup: export, engine folder, options; the session is faked
    trt = dict(_TrtSession.made[-1])[TENSORRT]
    assert trt["trt_profile_min_shapes"].startswith("input_ids:1x")
    assert trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"]
    assert trt["trt_profile_max_shapes"].startswith("input_ids:8x")
    assert runner._engine is not None and "-fp32-b1-8-" in runner._engine[1].name
    runner.teardown()
    deploy = OnnxRuntimeRunner.deploy_settings(config)["onnxruntime"]["trt_profile_shapes"]
    assert "at batch 1, opt = max = at batch 8" in deploy


def test_a_batch_engine_keeps_min_opt_max_at_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "InferenceSession", _TrtSession)
    config = {"backend": "onnxruntime-tensorrt", "precision": "fp32", "tf32": True, "batch_size": 4}
    runner = OnnxRuntimeRunner(SPEC, config, Device("cuda", (0,), 0))
    runner.setup()
    trt = dict(_TrtSession.made[-1])[TENSORRT]
    assert trt["trt_profile_min_shapes"] == trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"]
    assert trt["trt_profile_max_shapes"].startswith("input_ids:4x")
    assert runner._engine is not None and "-fp32-b4-" in runner._engine[1].name
    runner.teardown()
