"""What this machine offers (probed once, in a child process) and its environment fingerprint.

Runner checks read these facts, so that an unsupported config is refused in milliseconds without
starting a worker, and the study records the hardware and library versions it was measured on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sysconfig
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from autotuner.models.int8_cpu import int8_dot_product
from autotuner.subprocesses import ChildFailed, nvidia_smi, run_module

_LIBS = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "optuna",
    "numpy",
    "transformers",
    "tensorrt-cu13",
    "tensorrt",
    "flash-attn",
    "nvidia-ml-py",
)


def probe(timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the probe in a fresh interpreter so the driver never imports torch itself."""

    try:
        return json.loads(
            run_module("autotuner.execution.capabilities", timeout_s=timeout_s).strip().splitlines()[-1]
        )
    except (ChildFailed, subprocess.SubprocessError, json.JSONDecodeError, IndexError) as e:
        caps = _static()
        caps["probe_error"] = str(e).splitlines()[0][:300]
        return caps


def _static() -> dict[str, Any]:
    libs = {}
    for name in _LIBS:
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        # vnni, saturating (x86 without VNNI: int8 needs 7-bit weights) or other (models.int8_cpu)
        "int8_dot": int8_dot_product(),
        "machine": platform.machine(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "libraries": libs,
        "cuda_devices": 0,
        "gpus": [],
        "ort_providers": [],
        # Whether the flash-attn package is installed (found, not imported: importing it loads
        # CUDA kernels). attn_implementation=flash_attention_2 needs it.
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        # What Triton builds its launcher with on first use (torch.compile on CUDA).
        "c_compiler": c_compiler(),
        "python_headers": (Path(sysconfig.get_paths()["include"]) / "Python.h").exists(),
    }


def c_compiler() -> str | None:
    """The C compiler Triton would use: $CC, else cc, gcc or clang on PATH; None if none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


def _live() -> dict[str, Any]:
    caps = _static()
    try:
        import torch  # noqa: PLC0415 (heavy: torch)

        caps["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            caps["cuda_devices"] = n
            caps["gpus"] = [torch.cuda.get_device_name(i) for i in range(n)]
            caps["cuda_bf16"] = bool(torch.cuda.is_bf16_supported())
            caps["gpu_memory_mb"] = torch.cuda.get_device_properties(0).total_memory / 2**20
    except ImportError:
        pass
    try:
        import onnxruntime as ort  # noqa: PLC0415 (heavy: onnxruntime)

        from autotuner.runners.gpu_libraries import load_ort_libraries, provider_load_probe  # noqa: PLC0415 (optional dependency)

        caps["ort_providers"] = list(ort.get_available_providers())  # built in, not yet loaded
        caps["ort_libraries"] = load_ort_libraries(ort)
        caps.update(provider_load_probe(ort))  # the providers a session really gets
    except ImportError:
        pass
    caps["nvidia_driver"] = _nvidia_driver()
    return caps


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_driver() -> str | None:
    rows = nvidia_smi("gpu", "driver_version")
    return rows[0][0] if rows and rows[0] else None


if __name__ == "__main__":
    from autotuner.watchdog import arm_from_env

    arm_from_env()  # end with the process that asked, whoever kills it
    print(json.dumps(_live()))
