"""What makes a GPU validation row pass: not only that the trial returned, but that it ran where
and as it says, agrees with fp32 and has plausible NVML figures. Pure functions of a TrialResult
(and the rows before it), so they are tested without a GPU (tests/project/test_gpu_checks.py);
benchmarks/gpu_validation.py runs the paths and applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The lowest accuracy_cosine against the fp32 reference each precision passes with (timed
# runners): fp32 differs by reduction order only, tf32 by a 10-bit mantissa, fp16 / bf16 by
# their rounding, int8 by its quantization.
COSINE_MIN = {"fp32": 0.9999, "tf32": 0.999, "fp16": 0.99, "bf16": 0.98, "int8": 0.95}
# The LLM runner: greedy tokens agreeing with the fp32 reference, and the next-token logits.
LLM_AGREEMENT_MIN = {"fp32": 1.0, "tf32": 0.9, "fp16": 0.5, "bf16": 0.5}
LLM_LOGIT_DIFF_MAX = {"fp32": 1e-4, "tf32": 0.05, "fp16": 0.05, "bf16": 0.05}
# NVML figures a GPU row must carry (a workload runner: memory only, over its run).
NVML_WINDOW = ("gpu_peak_memory_mb", "gpu_util_pct", "sm_clock_mhz", "power_w", "energy_j_per_item")
NVML_WORKLOAD = ("gpu_peak_memory_mb",)


@dataclass(frozen=True)
class Row:
    """One validation row: a name, the config, and what its result must show."""

    name: str
    config: dict[str, Any]
    scenario: str = "batch"
    provider: str | None = None  # the ORT provider the nodes must run on (node_placement)
    decode_path: str | None = None  # the LLM decode path the result must name
    quick: bool = True  # part of --quick
    reuse_of: str | None = None  # a second run that must reuse this row's TensorRT engine
    extra: dict[str, Any] = field(default_factory=dict)


def precision_of(config: dict[str, Any]) -> str:
    precision = str(config.get("precision", "fp32"))
    return "tf32" if precision == "fp32" and config.get("tf32") else precision


def accuracy_problems(path: Row, metrics: dict[str, float]) -> list[str]:
    """Where the row's accuracy against fp32 misses its precision's threshold."""
    precision = precision_of(path.config)
    if path.config.get("backend") == "llm":
        out = []
        agree, diff = metrics.get("accuracy_token_agreement"), metrics.get("accuracy_max_logit_diff")
        if agree is None or agree < LLM_AGREEMENT_MIN[precision]:
            out.append(f"token agreement {agree} < {LLM_AGREEMENT_MIN[precision]}")
        if diff is None or diff > LLM_LOGIT_DIFF_MAX[precision]:
            out.append(f"max logit diff {diff} > {LLM_LOGIT_DIFF_MAX[precision]}")
        return out
    if path.config.get("backend") == "command":
        return []  # a program reports no accuracy
    cosine = metrics.get("accuracy_cosine")
    if cosine is None or cosine < COSINE_MIN[precision]:
        return [f"accuracy_cosine {cosine} < {COSINE_MIN[precision]} ({precision})"]
    return []


def placement_problems(path: Row, info: dict[str, Any]) -> list[str]:
    """An ORT row whose nodes did not run where asked, or a GPU row not timed device-resident."""
    out = []
    backend = str(path.config.get("backend", ""))
    timed_gpu = backend.startswith(("onnxruntime-cuda", "onnxruntime-tensorrt")) or (
        backend.startswith("torch") and path.config.get("device") == "cuda"
    )
    if timed_gpu and info.get("transfer_policy") != "device-resident":
        out.append(f"transfer_policy {info.get('transfer_policy')!r}, not device-resident")
    if path.provider is not None:
        placed = info.get("node_placement")
        if placed is None:
            out.append("no node_placement in the trial's info")
        else:
            if placed.get("cpu_compute"):
                out.append(f"CPU compute nodes: {sorted(set(placed['cpu_compute']))[:6]}")
            counted = placed.get("by_provider") or {}
            if counted and not counted.get(path.provider):
                out.append(f"no node ran on {path.provider} ({counted})")
    if path.decode_path is not None and info.get("decode_path") != path.decode_path:
        out.append(f"decode_path {info.get('decode_path')!r}, not {path.decode_path!r}")
    return out


def nvml_problems(path: Row, metrics: dict[str, float]) -> list[str]:
    """Missing or implausible NVML figures: memory and energy above zero, some utilisation, a
    clock; a workload runner has memory only."""
    workload = path.config.get("backend") in ("llm", "command")
    needed = NVML_WORKLOAD if workload else NVML_WINDOW
    if path.scenario == "serving":  # a rate, not a throughput: no energy per item
        needed = tuple(m for m in needed if m != "energy_j_per_item")
    missing = [m for m in needed if m not in metrics]
    if missing:
        return [f"NVML figures missing: {', '.join(missing)}"]
    out = []
    for name in needed:
        if not metrics[name] > 0:
            out.append(f"{name} = {metrics[name]} (not > 0)")
    if "peak_memory_mb" in metrics and "model_file_mb" in metrics:
        if metrics["peak_memory_mb"] < metrics["model_file_mb"]:
            out.append("peak_memory_mb below the model file's size")
    return out


def reuse_problems(first_setup_s: float | None, second_setup_s: float | None, new_folders: int) -> list[str]:
    """A second TensorRT run of the same config must find the first's engine: no new engine
    folder, and a setup that did not build again (well under the first's)."""
    out = []
    if new_folders:
        out.append(f"{new_folders} new engine folder(s): the engine was built again")
    if first_setup_s is not None and second_setup_s is not None and second_setup_s > 0.5 * first_setup_s:
        out.append(f"setup {second_setup_s:.1f} s vs {first_setup_s:.1f} s: not a cached engine")
    return out


def row_problems(path: Row, result: Any) -> list[str]:
    """Every reason a row fails; empty: it passes."""
    if not result.ok:
        return [f"{result.failure_class}: {result.failure_message}"]
    metrics = {**result.metrics, **{k: v for k, v in result.info.items() if k == "model_file_mb"}}
    return [
        *accuracy_problems(path, metrics),
        *placement_problems(path, result.info),
        *nvml_problems(path, metrics),
    ]


def preflight_lines(caps: dict[str, Any], extra: dict[str, Any]) -> list[str]:
    """The prerequisites of the GPU paths, as found: providers that load (and why one does not),
    TensorRT, flash-attn, the C compiler and headers Triton needs, the compute capability."""
    loaded = caps.get("ort_providers_loaded")
    lines = [
        f"- ONNX Runtime providers built in: {', '.join(caps.get('ort_providers') or []) or 'none'}",
        f"- ONNX Runtime providers that load: {', '.join(loaded) if loaded is not None else 'not probed'}",
    ]
    for provider, why in (caps.get("ort_provider_errors") or {}).items():
        lines.append(f"  - {provider} does not load: {why}")
    lines += [
        f"- GPU libraries loaded for ORT: {caps.get('ort_libraries', 'not recorded')}",
        f"- TensorRT: {extra.get('tensorrt') or 'no pip TensorRT found'}",
        f"- flash-attn import: {extra.get('flash_attn', 'not tried')}",
        f"- C compiler (Triton): {caps.get('c_compiler') or 'none'}; Python headers: "
        f"{'found' if caps.get('python_headers') else 'missing'}",
        f"- compute capability: {extra.get('compute_capability', 'unknown')}",
    ]
    return lines
