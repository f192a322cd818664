"""Whether this CPU's int8 kernels saturate, and so whether int8 needs 7-bit weights (ONNX Runtime)
or 7-bit activations (torch).

On x86 without VNNI (AVX2, or AVX-512 without its VNNI extension), ONNX Runtime multiplies u8
activations by s8 weights with VPMADDUBSW, which adds each pair of products into a 16-bit
integer with saturation: large activations times large weights clip, and the outputs bend.
VNNI's VPDPBUSD accumulates in 32 bits and does not clip. ONNX Runtime's remedy is
`reduce_range`: weights quantized to 7 bits, so that no pair can overflow (torch's x86 kernels
have the same instruction; its `reduce_range` takes 7-bit activations). Measured with
`benchmarks/int8_saturation.py` (docs/benchmarks/int8_saturation.md): int8-dynamic of the
sessions model reads cosine 0.947 against fp32 on an AVX2-only CPU, 0.9996 with 7-bit weights,
and 0.9996 either way with VNNI.

What the process itself sees decides (cpuid, as ONNX Runtime's own dispatch reads it): numpy's
record of the CPU's features, else /proc/cpuinfo's flags.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

VNNI = "vnni"  # 32-bit accumulation: int8 at full range is exact
SATURATING = "saturating"  # x86 without VNNI: u8 x s8 pairs clip at 16 bits
OTHER = "other"  # not x86: ONNX Runtime's int8 kernels there do not clip
_X86 = ("x86_64", "amd64", "i386", "i686")
_VNNI_FEATURES = ("AVX512VNNI", "AVXVNNI", "AVX512_VNNI", "AVX_VNNI")
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def int8_dot_product() -> str:
    """How this CPU's int8 dot products accumulate: VNNI, SATURATING or OTHER."""
    if platform.machine().lower() not in _X86:
        return OTHER
    seen = _numpy_features()
    if seen is None:
        seen = _cpuinfo_flags()
    return VNNI if seen else SATURATING


def _numpy_features() -> bool | None:
    """Whether cpuid shows VNNI, as numpy read it; None where numpy does not say."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features  # noqa: PLC0415 (numpy 2 and 1 name it apart)
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features  # noqa: PLC0415 (numpy 2 and 1 name it apart)
        except ImportError:
            return None
    if "AVX2" not in features:
        return None
    return any(features.get(name) for name in _VNNI_FEATURES)


def _cpuinfo_flags() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # nothing to read: assume the kernels do not clip
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return any(f in flags for f in _VNNI_FLAGS)


# The backends whose int8 runs on this CPU's int8 kernels (GPU providers do not use them).
CPU_INT8 = ("onnxruntime-cpu", "torch-eager")


def reduce_range(setting: Any, backend: str) -> bool:
    """The `reduce_range` knob resolved: true or false as given; "auto" is true for a CPU
    backend on a CPU whose int8 kernels saturate."""
    if setting == "auto":
        return backend in CPU_INT8 and int8_dot_product() == SATURATING
    return bool(setting)


def why_reduce_range(setting: Any, backend: str) -> str:
    """One line on the resolved value, for the trial's record and the deploy section."""
    value = reduce_range(setting, backend)
    if setting != "auto":
        return f"reduce_range {str(value).lower()}: as the config sets it"
    kind = int8_dot_product()
    if value:
        return "reduce_range true (auto): this CPU has no VNNI, its u8 x s8 int8 kernels saturate at 16 bits"
    if backend not in CPU_INT8:
        return f"reduce_range false (auto): {backend} does not run the CPU's int8 kernels"
    return f"reduce_range false (auto): this CPU's int8 kernels do not saturate ({kind})"
