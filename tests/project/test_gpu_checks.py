"""benchmarks/gpu_validation.py without a GPU: every row's spec is valid and admitted by its
runner on a (faked) H100's capabilities, the pass rules (benchmarks/gpu_checks.py) fail what
they should on faked results, and on this machine the script says so in one line and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import gpu_checks as gc  # noqa: E402
import gpu_validation as gv  # noqa: E402

from autotuner.result import TrialResult  # noqa: E402

H100 = {
    "cpu_cores": 16,
    "cuda_devices": 1,
    "cuda_bf16": True,
    "gpus": ["NVIDIA H100 80GB HBM3"],
    "gpu_memory_mb": 81_559.0,
    "flash_attn": True,
    "c_compiler": "/usr/bin/cc",
    "python_headers": True,
    "ort_providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort_providers_loaded": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort_provider_errors": {},
    "libraries": {"onnxruntime-gpu": "1.31.1"},
}


@pytest.mark.parametrize("row", [*gv.ROWS, gv.RAY_ROW], ids=lambda r: r.name)
def test_every_row_is_a_valid_spec_its_runner_admits_on_a_gpu(row: gc.Row) -> None:
    from autotuner.search.precheck import precheck
    from autotuner.search.space import bench_config

    spec = gv.spec_for(row, quick=True)
    full = bench_config(spec, {})
    known = precheck(spec, full, H100, [])
    assert known is None, known.failure_message


def test_quick_mode_keeps_the_main_rows_and_the_engine_reuse_pair() -> None:
    quick = {r.name for r in gv.ROWS if r.quick}
    for name in ("ORT CUDA fp32", "TensorRT fp16", "TensorRT fp16, second run", "llm sdpa bf16"):
        assert name in quick
    assert not gv.RAY_ROW.quick and "torch.compile max-autotune fp16" not in quick
    assert all(r.reuse_of in quick for r in gv.ROWS if r.quick and r.reuse_of)


def _ok(metrics: dict[str, float], info: dict[str, Any] | None = None) -> TrialResult:
    return TrialResult(ok=True, metrics=metrics, info=info or {})


NVML = {"gpu_peak_memory_mb": 900.0, "gpu_util_pct": 40.0, "sm_clock_mhz": 1980.0, "power_w": 250.0}
ORT_ROW = gc.Row(
    "ORT CUDA fp16", {"backend": "onnxruntime-cuda", "precision": "fp16"}, provider="CUDAExecutionProvider"
)
PLACED = {
    "by_provider": {"CUDAExecutionProvider": 40, "CPUExecutionProvider": 9},
    "cpu_compute": [],
    "cpu_scalars": ["Sqrt"],
}
GOOD_INFO = {"transfer_policy": "device-resident", "node_placement": PLACED}


def test_a_row_passes_only_when_accuracy_placement_and_nvml_hold() -> None:
    good = {"accuracy_cosine": 0.999, "energy_j_per_item": 0.01, **NVML}
    assert gc.row_problems(ORT_ROW, _ok(good, GOOD_INFO)) == []
    low = gc.row_problems(ORT_ROW, _ok({**good, "accuracy_cosine": 0.95}, GOOD_INFO))
    assert low and "accuracy_cosine" in low[0]
    cpu = {**GOOD_INFO, "node_placement": {**PLACED, "cpu_compute": ["MatMul"]}}
    assert any("CPU compute" in p for p in gc.row_problems(ORT_ROW, _ok(good, cpu)))
    elsewhere = {**GOOD_INFO, "node_placement": {**PLACED, "by_provider": {"CPUExecutionProvider": 49}}}
    assert any("no node ran on" in p for p in gc.row_problems(ORT_ROW, _ok(good, elsewhere)))
    copied = {**GOOD_INFO, "transfer_policy": None}
    assert any("device-resident" in p for p in gc.row_problems(ORT_ROW, _ok(good, copied)))
    no_nvml = {k: v for k, v in good.items() if k != "power_w"}
    assert any("missing: power_w" in p for p in gc.row_problems(ORT_ROW, _ok(no_nvml, GOOD_INFO)))
    idle = {**good, "gpu_util_pct": 0.0}
    assert any("gpu_util_pct" in p for p in gc.row_problems(ORT_ROW, _ok(idle, GOOD_INFO)))
    failed = TrialResult.failure("unsupported", "CUDAExecutionProvider does not load")
    assert gc.row_problems(ORT_ROW, failed) == ["unsupported: CUDAExecutionProvider does not load"]


def test_thresholds_follow_the_precision() -> None:
    fp32 = gc.Row("x", {"backend": "torch-eager", "device": "cuda", "precision": "fp32"})
    tf32 = gc.Row("x", {"backend": "torch-eager", "device": "cuda", "precision": "fp32", "tf32": True})
    assert gc.accuracy_problems(fp32, {"accuracy_cosine": 0.9995})  # fp32 must be near exact
    assert not gc.accuracy_problems(tf32, {"accuracy_cosine": 0.9995})
    llm = gc.Row("llm", {"backend": "llm", "precision": "bf16"}, decode_path="varlen")
    assert not gc.accuracy_problems(llm, {"accuracy_token_agreement": 0.9, "accuracy_max_logit_diff": 0.02})
    assert gc.accuracy_problems(llm, {"accuracy_token_agreement": 0.9, "accuracy_max_logit_diff": 0.5})
    info = {"decode_path": "block-table"}
    assert any("decode_path" in p for p in gc.placement_problems(llm, info))
    serving = gc.Row("s", {"backend": "torch-eager", "device": "cuda"}, scenario="serving")
    assert gc.nvml_problems(serving, NVML) == []  # a rate: no energy per item asked


def test_a_second_tensorrt_run_must_not_build_again() -> None:
    assert gc.reuse_problems(40.0, 3.0, 0) == []
    assert any("built again" in p for p in gc.reuse_problems(40.0, 3.0, 1))
    assert any("not a cached engine" in p for p in gc.reuse_problems(40.0, 35.0, 0))


def test_the_preflight_says_which_providers_load_and_why_not() -> None:
    caps = {**H100, "ort_providers_loaded": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    caps["ort_provider_errors"] = {"TensorrtExecutionProvider": "libnvinfer.so.10: cannot open shared object"}
    lines = gc.preflight_lines(
        caps, {"tensorrt": None, "flash_attn": "imports, 2.8.3", "compute_capability": "9.0"}
    )
    text = "\n".join(lines)
    assert "load: CUDAExecutionProvider, CPUExecutionProvider" in text
    assert "libnvinfer.so.10" in text and "no pip TensorRT found" in text
    assert "imports, 2.8.3" in text and "9.0" in text and "/usr/bin/cc" in text


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would run every row")
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_validation.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0
    assert done.stdout.strip().count("\n") == 0 and "no CUDA GPU" in done.stdout


def test_the_command_row_runs_the_program_as_written() -> None:
    from autotuner.backends.command_runner import render

    row = next(r for r in gv.ROWS if r.config["backend"] == "command")
    argv = gv.spec_for(row, quick=True).sections["command"]["argv"]
    program = render(argv[2], {"backend": "command", "model": "m", "trial_dir": "/tmp"})
    assert program == gv.MATMUL
    compile(program, "<command row>", "exec")
