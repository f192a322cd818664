"""The onnxruntime backend's settings: its providers, ONNX Runtime's enum names, and every knob
the runner reads, declared once (defaults, choices, which providers each applies to). It imports
neither the runner nor onnxruntime, so the pure pieces (`options`) read defaults from here.
"""

from __future__ import annotations

from typing import Any

from autotuner.backends.int8_knobs import int8_knobs
from autotuner.models.quantization import ORT_CALIBRATIONS
from autotuner.runners.knobs import SERVING, Knob, precisions
from autotuner.runners.knobs import value as knob_value

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDERS = {"onnxruntime-cpu": CPU, "onnxruntime-cuda": CUDA, "onnxruntime-tensorrt": TENSORRT}
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
EXEC_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
CONV_ALGO_SEARCH = ("exhaustive", "heuristic", "default")  # the CUDA provider's, lower-cased
TRT_OPT_LEVELS = (0, 1, 2, 3, 4, 5)
# Knobs that apply to some providers only: where they cannot apply, a value other than the
# default is refused (the default is then simply not read), so no config is measured twice.
GPU_BACKENDS = {"backend": ("onnxruntime-cuda", "onnxruntime-tensorrt")}
TRT_BACKEND = {"backend": ("onnxruntime-tensorrt",)}
ON_GPU = "to the CUDA and TensorRT providers"

KNOBS: dict[str, Knob] = {
    "precision": precisions("fp32", "fp16", "int8", "int8-dynamic", calibrated=("int8",)),
    "graph_optimization_level": Knob("all", choices=tuple(OPT_LEVELS)),
    "inter_op_threads": Knob(1),
    "execution_mode": Knob("sequential", choices=tuple(EXEC_MODES)),
    # None: the provider's way. A GPU trial is always timed through IO binding (the transfer
    # policy), so the knob no longer changes a measurement: true is accepted on CUDA /
    # TensorRT, false is refused there, and true is refused on the CPU (the runner's check).
    "io_binding": Knob(None),
    "tf32": Knob(
        False, kind=bool, applies_to=GPU_BACKENDS, where=f"{ON_GPU} (CPU kernels compute fp32 in fp32)"
    ),
    "cuda_graph": Knob(False, kind=bool, applies_to=GPU_BACKENDS, where=ON_GPU),
    "cudnn_conv_algo_search": Knob(
        "exhaustive",
        choices=CONV_ALGO_SEARCH,
        applies_to=GPU_BACKENDS,
        where="to the CUDA provider (and its share under TensorRT)",
    ),
    "trt_builder_optimization_level": Knob(
        3,
        choices=TRT_OPT_LEVELS,
        applies_to=TRT_BACKEND,
        where="to the TensorRT provider",
        unknown="{name} {value!r} is not one of 0 to 5",
    ),
    "trt_timing_cache": Knob(True, kind=bool, applies_to=TRT_BACKEND, where="to the TensorRT provider"),
    # reduce_range: 7-bit weights; "auto" takes them where the CPU's int8 kernels saturate (x86
    # without VNNI; models.int8_cpu), so int8 is judged as it can run there.
    **int8_knobs(ORT_CALIBRATIONS, reduced=("int8", "int8-dynamic")),
    **SERVING,
}


def value(config: dict[str, Any], name: str) -> Any:
    """A knob's value in a config, or its default (OnnxRuntimeRunner.knob, without the runner)."""
    return knob_value(KNOBS, config, name)
