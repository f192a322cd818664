"""ONNX Runtime runner: CPU, CUDA and TensorRT providers; fp32 / fp16 / dynamic int8.

A requested provider that is not available never falls back silently: `check` refuses it from
the probed provider list, and `setup` refuses a session whose first provider is not the one asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from autotuner.errors import UnsupportedConfig
from autotuner.runners.base import TimedRunner
from autotuner.spec.schema import Spec

PROVIDERS = {
    "onnxruntime-cpu": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
EXEC_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


class OnnxRuntimeRunner(TimedRunner):
    name = "onnxruntime"
    backends = tuple(PROVIDERS)
    knobs: ClassVar[dict[str, Any]] = {
        "graph_optimization_level": "all",
        "inter_op_threads": 1,
        "execution_mode": "sequential",
        "io_binding": False,
    }
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {
        "graph_optimization_level": tuple(OPT_LEVELS),
        "execution_mode": tuple(EXEC_MODES),
    }

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        reason = super().check(spec, config, caps)
        if reason:
            return reason
        backend = config["backend"]
        provider = PROVIDERS[backend]
        offered = caps.get("ort_providers") or []
        if provider not in offered:
            version = caps.get("libraries", {}).get("onnxruntime") or caps.get("libraries", {}).get(
                "onnxruntime-gpu", "?"
            )
            return (
                f"{provider} is not available in onnxruntime {version} here "
                f"(offers {', '.join(offered) or 'none'}); it is never replaced by another provider"
            )
        precision = cls.value(config, "precision")
        if precision == "int8" and backend != "onnxruntime-cpu":
            return "dynamic int8 (MatMulInteger) runs on CPU kernels; on GPUs it needs calibration"
        level = cls.value(config, "graph_optimization_level")
        if level not in OPT_LEVELS:
            return f"graph_optimization_level {level!r} is not one of {', '.join(OPT_LEVELS)}"
        mode = cls.value(config, "execution_mode")
        if mode not in EXEC_MODES:
            return f"execution_mode {mode!r} is not one of {', '.join(EXEC_MODES)}"
        if cls.value(config, "io_binding") and backend == "onnxruntime-cpu":
            return "io_binding applies to the CUDA and TensorRT providers"
        return None

    @classmethod
    def needs_gpu(cls, config: dict[str, Any]) -> bool:
        return (
            PROVIDERS.get(str(cls.value(config, "backend")), "CPUExecutionProvider") != "CPUExecutionProvider"
        )

    def setup(self) -> None:
        import onnxruntime as ort

        from autotuner.files import cache_dir
        from autotuner.models.artifacts import onnx_path

        backend = self.config["backend"]
        precision = self.value(self.config, "precision")
        # TensorRT builds its own fp16 engine from the fp32 graph.
        source = "fp32" if backend == "onnxruntime-tensorrt" else precision
        path = onnx_path(self.spec, source)
        self.provider = PROVIDERS[backend]
        so = ort.SessionOptions()
        threads = self.value(self.config, "threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = int(self.value(self.config, "inter_op_threads"))
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, OPT_LEVELS[self.value(self.config, "graph_optimization_level")]
        )
        so.execution_mode = getattr(ort.ExecutionMode, EXEC_MODES[self.value(self.config, "execution_mode")])
        so.log_severity_level = 3
        opts: dict[str, Any] = {}
        if self.provider != "CPUExecutionProvider":
            opts["device_id"] = int(self.device.cuda_index or 0)
        if self.provider == "TensorrtExecutionProvider":
            opts["trt_fp16_enable"] = precision == "fp16"
            opts["trt_engine_cache_enable"] = True
            opts["trt_engine_cache_path"] = str(cache_dir() / "tensorrt")
        self.session = ort.InferenceSession(str(path), so, providers=[(self.provider, opts)])
        active = self.session.get_providers()
        if not active or active[0] != self.provider:
            raise UnsupportedConfig(
                f"onnxruntime created the session on {active[0] if active else 'nothing'} "
                f"instead of {self.provider}; not accepted as a silent fallback"
            )
        self.ort = ort
        self.binding = None

    @property
    def _on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"

    def prepare(self, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        sess = self.session
        if self.value(self.config, "io_binding") and self._on_gpu:
            idx = int(self.device.cuda_index or 0)
            binding = sess.io_binding()
            for name, arr in batch.items():
                binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(arr, "cuda", idx))
            for out in sess.get_outputs():
                binding.bind_output(out.name, "cuda", idx)
            self.binding = binding
            return lambda: sess.run_with_iobinding(binding)
        feeds = dict(batch)
        return lambda: sess.run(None, feeds)

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(None, batch)[0], dtype=np.float32)

    def synchronize(self) -> None:
        if self.binding is not None:
            self.binding.synchronize_outputs()

    def device_peak_memory_mb(self) -> float | None:
        if not self._on_gpu:
            return None
        return _nvidia_process_memory_mb(os.getpid())

    def teardown(self) -> None:
        self.session = None

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        backend = config["backend"]
        precision = cls.value(config, "precision")
        settings: dict[str, Any] = {
            "providers": [PROVIDERS[backend]],
            "session_options": {
                "intra_op_num_threads": int(cls.value(config, "threads") or 0),
                "inter_op_num_threads": int(cls.value(config, "inter_op_threads")),
                "graph_optimization_level": OPT_LEVELS[cls.value(config, "graph_optimization_level")],
                "execution_mode": EXEC_MODES[cls.value(config, "execution_mode")],
            },
            "io_binding": bool(cls.value(config, "io_binding")),
        }
        if precision == "int8":
            settings["quantization"] = (
                "onnxruntime.quantization.quantize_dynamic(fp32_model, int8_model, "
                "weight_type=QuantType.QInt8)"
            )
        elif precision == "fp16" and backend != "onnxruntime-tensorrt":
            settings["conversion"] = (
                "onnxruntime.transformers.float16.convert_float_to_float16(model, keep_io_types=True)"
            )
        if backend == "onnxruntime-tensorrt":
            settings["provider_options"] = {"trt_fp16_enable": precision == "fp16"}
        return {"onnxruntime": settings}


def _nvidia_process_memory_mb(pid: int) -> float | None:
    from autotuner.processes import nvidia_smi

    for row in nvidia_smi("compute-apps", "pid,used_memory") or []:
        if len(row) == 2 and row[0] == str(pid):
            return float(row[1])
    return None
