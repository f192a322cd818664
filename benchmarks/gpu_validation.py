"""Every GPU path, proved and not only run, on a small model (autotuner's own executors).

    python benchmarks/gpu_validation.py            # every row, about 10 minutes on one H100/H200
    python benchmarks/gpu_validation.py --quick    # the main rows, shorter windows: under 4 minutes
    python benchmarks/gpu_validation.py --tests    # also the CUDA tests (pytest), in the same run

Rows: torch CUDA fp32 / tf32 / fp16 / bf16, torch.compile (default, reduce-overhead,
max-autotune), ONNX Runtime CUDA (fp32, tf32, fp16, CUDA graph, int8 QDQ) and TensorRT (fp32 and
fp32 + CUDA graph, fp16, int8 QDQ, and a second fp16 run that must reuse the first's engine), the
serving scenario on the GPU (torch and ORT CUDA, two instances), the LLM runner (sdpa, eager,
fp32 + tf32, CUDA graphs, flash-attention with 16-token pages on the varlen decode path), the
command runner holding one GPU, and Ray with one GPU per trial. A row passes when its trial
completed, its accuracy against fp32 meets its precision's threshold, ORT's nodes ran on the
provider asked (no CPU compute), the timing was device-resident, and its NVML figures are there
and plausible (benchmarks/gpu_checks.py). A preflight block says which ONNX Runtime providers
really load (and why one does not), the TensorRT version, whether flash-attn imports, the C
compiler Triton needs and the compute capability. Writes docs/benchmarks/gpu.md, also when rows
fail. Where no GPU exists it says so in one line, writes nothing and exits 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_lines, write_doc  # noqa: E402
from gpu_checks import Row, preflight_lines, reuse_problems, row_problems  # noqa: E402

from autotuner.api import make_executor, probe, spec_from_dict  # noqa: E402

MODEL = {
    "builtin": "tiny-transformer",
    "options": {"layers": 2, "hidden": 256, "heads": 4, "seq_len": 64, "vocab": 1000},
}
MEASUREMENT = {
    "warmup_iters": 3,
    "min_iters": 20,
    "min_time_s": 0.5,
    "max_time_s": 2.0,
    "trial_timeout_s": 300,
}
QUICK_MEASUREMENT = {
    **MEASUREMENT,
    "min_iters": 10,
    "min_time_s": 0.2,
    "max_time_s": 0.6,
    "trial_timeout_s": 120,
}
LLM_WORKLOAD = {"requests": 8, "prompt_len": {"dist": "uniform", "low": 16, "high": 64}, "output_len": 16}
SERVING = {"rate_rps": 200, "duration_s": 2.0}
FIGURES = (
    "throughput_items_s",
    "output_tokens_s",
    "latency_p50_ms",
    "accuracy_cosine",
    "accuracy_token_agreement",
    "peak_memory_mb",
    "gpu_util_pct",
    "sm_clock_mhz",
    "power_w",
    "energy_j_per_item",
    "gpu_throttle",
    "setup_s",
)
TORCH = {"backend": "torch-eager", "device": "cuda", "batch_size": 8}
ORT = {"backend": "onnxruntime-cuda", "batch_size": 8}
TRT = {"backend": "onnxruntime-tensorrt", "batch_size": 8, "tf32": True}
LLM = {"backend": "llm", "device": "cuda", "precision": "bf16", "attn_implementation": "sdpa"}
CUDA_EP, TRT_EP = "CUDAExecutionProvider", "TensorrtExecutionProvider"
# The command row: a program that holds the GPU it was shown and reports its own throughput.
MATMUL = (
    "import json, os, time, torch\n"
    "x = torch.randn(2048, 2048, device='cuda'); torch.cuda.synchronize(); t = time.perf_counter()\n"
    "for _ in range(50): x @ x\n"
    "torch.cuda.synchronize(); dt = time.perf_counter() - t\n"
    "print(json.dumps({'items_s': 50 / dt, 'visible': os.environ.get('CUDA_VISIBLE_DEVICES', '')}))"
)
ROWS: list[Row] = [
    Row("torch CUDA fp32", {**TORCH, "precision": "fp32"}),
    Row("torch CUDA tf32", {**TORCH, "precision": "fp32", "tf32": True}, quick=False),
    Row("torch CUDA fp16", {**TORCH, "precision": "fp16"}),
    Row("torch CUDA bf16", {**TORCH, "precision": "bf16"}, quick=False),
    Row("torch.compile fp16", {**TORCH, "backend": "torch-compile", "precision": "fp16"}),
    Row(
        "torch.compile reduce-overhead fp16",
        {**TORCH, "backend": "torch-compile", "precision": "fp16", "compile_mode": "reduce-overhead"},
        quick=False,
    ),
    Row(
        "torch.compile max-autotune fp16",
        {**TORCH, "backend": "torch-compile", "precision": "fp16", "compile_mode": "max-autotune"},
        quick=False,
    ),
    Row("ORT CUDA fp32", {**ORT, "precision": "fp32"}, provider=CUDA_EP),
    Row("ORT CUDA tf32", {**ORT, "precision": "fp32", "tf32": True}, provider=CUDA_EP, quick=False),
    Row("ORT CUDA fp16", {**ORT, "precision": "fp16"}, provider=CUDA_EP),
    Row("ORT CUDA + CUDA graph", {**ORT, "precision": "fp32", "cuda_graph": True}, quick=False),
    Row("ORT CUDA int8 (static, QDQ)", {**ORT, "precision": "int8"}, provider=CUDA_EP, quick=False),
    Row("TensorRT fp32", {**TRT, "precision": "fp32"}, provider=TRT_EP, quick=False),
    Row("TensorRT fp32 + CUDA graph", {**TRT, "precision": "fp32", "cuda_graph": True}, quick=False),
    Row("TensorRT fp16", {**TRT, "precision": "fp16"}, provider=TRT_EP),
    Row("TensorRT fp16, second run", {**TRT, "precision": "fp16"}, provider=TRT_EP, reuse_of="TensorRT fp16"),
    Row("TensorRT int8 (static, QDQ)", {**TRT, "precision": "int8"}, provider=TRT_EP, quick=False),
    Row(
        "serving torch CUDA fp16, 2 instances",
        {
            "backend": "torch-eager",
            "device": "cuda",
            "precision": "fp16",
            "max_batch_size": 8,
            "instances": 2,
        },
        scenario="serving",
    ),
    Row(
        "serving ORT CUDA fp32, 2 instances",
        {"backend": "onnxruntime-cuda", "precision": "fp32", "max_batch_size": 8, "instances": 2},
        scenario="serving",
        provider=CUDA_EP,
    ),
    Row("llm sdpa bf16", LLM, decode_path="varlen"),
    Row("llm eager bf16", {**LLM, "attn_implementation": "eager"}, quick=False),
    Row("llm sdpa fp32 + tf32", {**LLM, "precision": "fp32", "tf32": True}, quick=False),
    Row("llm sdpa bf16 + CUDA graphs", {**LLM, "cuda_graph": True}, quick=False),
    Row(
        "llm flash-attention bf16, 16-token pages",
        {**LLM, "attn_implementation": "flash_attention_2"},
        decode_path="varlen",
    ),
    Row("command holding 1 GPU", {"backend": "command"}, quick=False),
]
RAY_ROW = Row("Ray, one GPU per trial (torch fp16)", {**TORCH, "precision": "fp16"}, quick=False)
LIBRARIES = (
    "torch",
    "onnxruntime-gpu",
    "onnxruntime",
    "tensorrt-cu13",
    "nvidia-ml-py",
    "transformers",
    "ray",
    "flash-attn",
)
CUDA_TESTS = (
    "tests/backends/test_gpu_paths_ort.py",
    "tests/backends/test_gpu_paths_llm.py",
    "tests/execution/test_gpu_placement.py",
    "tests/backends/test_gpu_review_ort.py",
    "tests/backends/test_gpu_review_llm.py",
    "tests/measure/test_gpu_review_measurement.py",
)


def calibration_file() -> Path:
    """Seeded token ids for the tiny transformer's static int8 (a temporary .npz, made once)."""
    import tempfile

    import numpy as np

    path = Path(tempfile.gettempdir()) / "autotune-gpu-validation-ids.npz"
    if not path.exists():
        ids = np.random.default_rng(0).integers(0, MODEL["options"]["vocab"], size=(160, 64), dtype=np.int64)
        np.savez(path, input_ids=ids)
    return path


def spec_for(row: Row, quick: bool) -> Any:
    """A spec whose space is the row's config itself (every value fixed)."""
    config = row.config
    backend = config["backend"]
    llm = backend == "llm"
    d: dict[str, Any] = {
        "name": "gpu-validation",
        "model": {"builtin": "tiny-llama"} if llm else MODEL,
        "space": dict(config),
        "objectives": [
            {"metric": "output_tokens_s" if llm else "throughput_items_s", "direction": "maximize"}
        ],
        "measurement": QUICK_MEASUREMENT if quick else MEASUREMENT,
    }
    if config.get("precision") == "int8":  # static int8 calibrates on real inputs: seeded token ids here
        d["data"] = {"file": str(calibration_file()), "calibration": 64, "evaluation": 64}
    if llm:
        d["workload"] = LLM_WORKLOAD
        d["space"].update(kv_budget_mb=16.0, max_batch_tokens=256, batch_size=4, page_size=16)
    if row.scenario == "serving":
        d["scenario"] = "serving"
        d["serving"] = {**SERVING, "duration_s": 1.0 if quick else SERVING["duration_s"]}
        d["space"]["threads"] = 2
        d["objectives"] = [{"metric": "request_latency_p95_ms", "direction": "minimize"}]
    if backend == "command":
        d["model"] = {"external": "matmul-2048"}
        d["command"] = {
            "argv": [sys.executable, "-c", MATMUL.replace("{", "{{").replace("}", "}}")],  # literal braces
            "metrics": {"throughput_items_s": "items_s"},
            "resources": {"gpus": 1},
        }
    return spec_from_dict(d, "gpu_validation")


def run_row(row: Row, caps: dict[str, Any], quick: bool, executor: str = "local") -> Any:
    """One trial of the row's config through an executor (the probed caps reused: no re-probe)."""
    from autotuner.api import check_model
    from autotuner.execution.base import TrialRequest
    from autotuner.search.precheck import precheck
    from autotuner.search.space import bench_config

    spec = check_model(spec_for(row, quick))
    full = bench_config(spec, {})
    known = precheck(spec, full, caps, [])
    if known is not None:
        return known
    ex = make_executor(executor, spec, caps)
    try:
        return ex.submit(TrialRequest(0, full)).result()
    finally:
        ex.close()


def engine_folders() -> set[str]:
    from autotuner.files import cache_dir

    root = cache_dir() / "tensorrt"
    return (
        {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if root.is_dir()
        else set()
    )


def child_facts() -> dict[str, Any]:
    """What needs CUDA loaded, asked of a child: compute capability, flash-attn's import, TensorRT."""
    code = (
        "import json, torch\n"
        "out = {'compute_capability': '.'.join(map(str, torch.cuda.get_device_capability(0)))}\n"
        "try:\n    import flash_attn; out['flash_attn'] = 'imports, ' + flash_attn.__version__\n"
        "except Exception as e:\n    out['flash_attn'] = f'fails: {type(e).__name__}: {e}'[:200]\n"
        "from autotuner.backends.onnxruntime.options import tensorrt_version\n"
        "out['tensorrt'] = tensorrt_version()\n"
        "print(json.dumps(out))"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError) as e:
        return {"error": str(e)[:200]}


def run_tests() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", *CUDA_TESTS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
    return f"exit {done.returncode}: {tail[0]}"


def main(argv: list[str]) -> int:
    caps = probe()
    if not caps.get("cuda_devices"):
        print("gpu_validation: no CUDA GPU on this machine (torch sees none); nothing run, nothing written")
        return 0
    quick = "--quick" in argv
    facts = child_facts()
    preflight = preflight_lines(caps, facts)
    print("\n".join(preflight), flush=True)
    rows: list[tuple[str, str, dict[str, float], float]] = []
    setups: dict[str, float | None] = {}
    todo = [r for r in ROWS if r.quick or not quick] + ([] if quick else [RAY_ROW])
    for row in todo:
        started = time.perf_counter()
        before = engine_folders()
        try:
            result = run_row(row, caps, quick, "ray" if row is RAY_ROW else "local")
            problems = row_problems(row, result)
            if row.reuse_of is not None:
                problems += reuse_problems(
                    setups.get(row.reuse_of), result.metrics.get("setup_s"), len(engine_folders() - before)
                )
            if row is RAY_ROW and result.ok and len(result.info.get("gpu_ids") or []) != 1:
                problems.append(f"the trial held GPUs {result.info.get('gpu_ids')}, not one")
            setups[row.name] = result.metrics.get("setup_s")
            status = "pass" if not problems else "fail (" + "; ".join(problems)[:400] + ")"
            metrics = result.metrics
        except Exception as e:  # noqa: BLE001 - a path that cannot even start is a fail, not a stop
            status, metrics = f"fail ({type(e).__name__}: {str(e).splitlines()[0][:200]})", {}
        rows.append((row.name, status, metrics, time.perf_counter() - started))
        print(f"{row.name}: {status}", flush=True)
    tests = run_tests() if "--tests" in argv else "not run (add --tests)"
    print(f"CUDA tests: {tests}")
    write_doc("gpu.md", report(rows, caps, preflight, tests, quick))
    return 0


def cell(metric: str, v: Any) -> str:
    if v is None:
        return "-"
    return f"{int(v):#x}" if metric == "gpu_throttle" else f"{v:.4g}"


def report(
    rows: list[tuple[str, str, dict[str, float], float]],
    caps: dict[str, Any],
    preflight: list[str],
    tests: str,
    quick: bool,
) -> list[str]:
    lines = [
        "# GPU paths",
        "",
        f"`python benchmarks/gpu_validation.py{' --quick' if quick else ''}`: every GPU path on a small",
        "model (tiny-transformer, 2 layers, hidden 256, seq 64, batch 8; the LLM runner on tiny-llama).",
        "A row passes when it completed, its accuracy against fp32 meets its precision's threshold",
        "(benchmarks/gpu_checks.py), ORT's nodes ran on the provider asked, the timing was",
        "device-resident and its NVML figures are there and above zero.",
        "",
        "## Preflight",
        "",
        *preflight,
        "",
        "## Rows",
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
        "",
        "`gpu_throttle` is the OR of the NVML clock-event reason bits seen in the timed window (0: none).",
        "",
        f"CUDA tests: {tests}",
        "",
        "## Machine",
        "",
        f"- GPU: {', '.join(caps.get('gpus') or [])} ({caps.get('gpu_memory_mb', 0) / 1024:.0f} GiB)",
        f"- NVIDIA driver: {caps.get('nvidia_driver')}",
        f"- CUDA (torch build): {caps.get('torch_cuda')}",
        *machine_lines(),
        *(f"- {lib}: {v}" for lib, v in library_versions().items()),
    ]
    return lines


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
