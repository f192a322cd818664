"""Every GPU path once, on a small model, through the public API (autotuner.api.bench).

    python benchmarks/gpu_validation.py            # about 5 minutes on one GPU
    python benchmarks/gpu_validation.py --quick    # without compile max-autotune

Paths: torch CUDA fp32 / fp16 / bf16, torch.compile (default and max-autotune), ONNX Runtime CUDA
(fp32, tf32, CUDA graph; always with IO binding, the one transfer policy of GPU trials), TensorRT
fp16, the LLM runner with sdpa and flash-attention, Ray with
one GPU per trial, and the NVML metrics. Writes docs/benchmarks/gpu.md: pass/fail per path, the
figures, the GPU model, driver, CUDA and library versions. Where no GPU exists it says so in one
line, writes nothing and exits 0.
"""

from __future__ import annotations

import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_lines, write_doc  # noqa: E402

from autotuner.api import bench, make_executor, probe, spec_from_dict  # noqa: E402

MODEL = {
    "builtin": "tiny-transformer",
    "options": {"layers": 2, "hidden": 256, "heads": 4, "seq_len": 64, "vocab": 1000},
}
MEASUREMENT = {
    "warmup_iters": 3,
    "min_iters": 20,
    "min_time_s": 0.5,
    "max_time_s": 2.0,
    "trial_timeout_s": 600,
}
LLM_WORKLOAD = {"requests": 8, "prompt_len": {"dist": "uniform", "low": 16, "high": 64}, "output_len": 16}
NVML_METRICS = (
    "gpu_peak_memory_mb",
    "gpu_util_pct",
    "sm_clock_mhz",
    "power_w",
    "energy_j_per_item",
    "gpu_throttle",
)
FIGURES = (
    "throughput_items_s",
    "output_tokens_s",
    "latency_p50_ms",
    "peak_memory_mb",
    *NVML_METRICS,
    "setup_s",
)
TORCH = {"backend": "torch-eager", "device": "cuda", "batch_size": 8}
PATHS: list[tuple[str, dict[str, Any]]] = [
    ("torch CUDA fp32", {**TORCH, "precision": "fp32"}),
    ("torch CUDA fp16", {**TORCH, "precision": "fp16"}),
    ("torch CUDA bf16", {**TORCH, "precision": "bf16"}),
    ("torch.compile fp16", {**TORCH, "backend": "torch-compile", "precision": "fp16"}),
    (
        "torch.compile max-autotune fp16",
        {**TORCH, "backend": "torch-compile", "precision": "fp16", "compile_mode": "max-autotune"},
    ),
    ("ORT CUDA fp32", {"backend": "onnxruntime-cuda", "batch_size": 8}),
    ("ORT CUDA tf32", {"backend": "onnxruntime-cuda", "batch_size": 8, "tf32": True}),
    ("ORT CUDA + CUDA graph", {"backend": "onnxruntime-cuda", "batch_size": 8, "cuda_graph": True}),
    (
        "TensorRT fp16",
        {"backend": "onnxruntime-tensorrt", "batch_size": 8, "precision": "fp16", "tf32": True},
    ),
    ("ORT CUDA int8 (static, QDQ)", {"backend": "onnxruntime-cuda", "batch_size": 8, "precision": "int8"}),
    (
        "TensorRT int8 (static, QDQ)",
        {"backend": "onnxruntime-tensorrt", "batch_size": 8, "precision": "int8", "tf32": True},
    ),
    ("llm sdpa", {"backend": "llm", "device": "cuda", "precision": "bf16", "attn_implementation": "sdpa"}),
    (
        "llm flash-attention",
        {"backend": "llm", "device": "cuda", "precision": "bf16", "attn_implementation": "flash_attention_2"},
    ),
]
RAY_PATH = "Ray, one GPU per trial"
LIBRARIES = ("torch", "onnxruntime-gpu", "onnxruntime", "nvidia-ml-py", "transformers", "ray", "flash-attn")


def calibration_file() -> Any:
    """Seeded token ids for the tiny transformer's static int8 (a temporary .npz, made once)."""
    import tempfile

    import numpy as np

    path = Path(tempfile.gettempdir()) / "autotune-gpu-validation-ids.npz"
    if not path.exists():
        ids = np.random.default_rng(0).integers(0, MODEL["options"]["vocab"], size=(160, 64), dtype=np.int64)
        np.savez(path, input_ids=ids)
    return path


def spec_for(config: dict[str, Any]) -> Any:
    """A spec whose space is the config itself (every value fixed)."""
    llm = config["backend"] == "llm"
    d: dict[str, Any] = {
        "name": "gpu-validation",
        "model": {"builtin": "tiny-llama"} if llm else MODEL,
        "space": dict(config),
        "objectives": [
            {"metric": "output_tokens_s" if llm else "throughput_items_s", "direction": "maximize"}
        ],
        "measurement": MEASUREMENT,
    }
    if config.get("precision") == "int8":  # static int8 calibrates on real inputs: seeded token ids here
        d["data"] = {"file": str(calibration_file()), "calibration": 64, "evaluation": 64}
    if llm:
        d["workload"] = LLM_WORKLOAD
        d["space"].update(kv_budget_mb=16.0, max_batch_tokens=256, batch_size=4, page_size=16)
    return spec_from_dict(d, "gpu_validation")


def run_ray(config: dict[str, Any], caps: dict[str, Any]) -> Any:
    from autotuner.execution.base import TrialRequest
    from autotuner.search.space import bench_config

    spec = spec_for(config)
    ex = make_executor("ray", spec, caps)
    try:
        return ex.submit(TrialRequest(0, bench_config(spec, {}))).result()
    finally:
        ex.close()


def outcome(result: Any) -> str:
    if result.ok:
        return "pass"
    return f"fail ({result.failure_class}: {result.failure_message})"


def cell(metric: str, v: Any) -> str:
    if v is None:
        return "-"
    return f"{int(v):#x}" if metric == "gpu_throttle" else f"{v:.4g}"


def main(argv: list[str]) -> int:
    caps = probe()
    if not caps.get("cuda_devices"):
        print("gpu_validation: no CUDA GPU on this machine (torch sees none); nothing run, nothing written")
        return 0
    quick = "--quick" in argv
    rows: list[tuple[str, str, dict[str, float], float]] = []
    for name, config in PATHS:
        if quick and "max-autotune" in name:
            continue
        started = time.perf_counter()
        try:
            _, result = bench(spec_for(config), {})
            status, metrics = outcome(result), result.metrics
        except Exception as e:  # noqa: BLE001 - a path that cannot even start is a fail, not a stop
            status, metrics = f"fail ({type(e).__name__}: {str(e).splitlines()[0][:200]})", {}
        rows.append((name, status, metrics, time.perf_counter() - started))
        print(f"{name}: {status}", flush=True)
    started = time.perf_counter()
    try:
        result = run_ray({**TORCH, "precision": "fp16"}, caps)
        status, metrics = outcome(result), result.metrics
        gpu_ids = result.info.get("gpu_ids")
        if result.ok and gpu_ids is not None and len(gpu_ids) != 1:
            status = f"fail (the trial held GPUs {gpu_ids}, not one)"
    except Exception as e:  # noqa: BLE001
        status, metrics = f"fail ({type(e).__name__}: {str(e).splitlines()[0][:200]})", {}
    rows.append((RAY_PATH, status, metrics, time.perf_counter() - started))
    print(f"{RAY_PATH}: {status}", flush=True)
    first = rows[0][2]
    missing = [m for m in NVML_METRICS if m not in first]
    nvml = "pass" if not missing else f"fail (missing on torch CUDA fp32: {', '.join(missing)})"
    print(f"NVML metrics: {nvml}")

    lines = [
        "# GPU paths",
        "",
        "`python benchmarks/gpu_validation.py`: every GPU path once on a small model (tiny-transformer,",
        "2 layers, hidden 256, seq 64, batch 8; the LLM runner on tiny-llama), via `autotuner.api.bench`.",
        "",
        "| path | result | " + " | ".join(FIGURES) + " | wall s |",
        "|" + "---|" * (len(FIGURES) + 3),
    ]
    for name, status, metrics, wall in rows:
        lines.append(
            f"| {name} | {status} | "
            + " | ".join(cell(m, metrics.get(m)) for m in FIGURES)
            + f" | {wall:.0f} |"
        )
    lines += [
        f"| NVML metrics | {nvml} |" + " |" * (len(FIGURES) + 1),
        "",
        "`gpu_throttle` is the OR of the NVML clock-event reason bits seen in the timed window (0: none).",
        "",
        "## Machine",
        "",
        f"- GPU: {', '.join(caps.get('gpus') or [])} ({caps.get('gpu_memory_mb', 0) / 1024:.0f} GiB)",
        f"- NVIDIA driver: {caps.get('nvidia_driver')}",
        f"- CUDA (torch build): {caps.get('torch_cuda')}",
        f"- ONNX Runtime providers: {', '.join(caps.get('ort_providers') or [])}",
        *machine_lines(),
        *(f"- {lib}: {v}" for lib, v in library_versions().items()),
    ]
    write_doc("gpu.md", lines)
    return 0


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
