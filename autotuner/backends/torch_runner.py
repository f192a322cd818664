"""PyTorch runner: eager or torch.compile, on CPU or CUDA, fp32 / fp16 / bf16; int8 (static,
calibrated on the spec's data) and int8-dynamic on CPU."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from autotuner.backends.int8_knobs import int8_knobs
from autotuner.models.artifacts import first_tensor
from autotuner.models.builtins import build_torch_model, model_inputs
from autotuner.models.dataset import calibration_batches, data_sets
from autotuner.models.int8_cpu import why_reduce_range
from autotuner.models.quantization import TORCH_CALIBRATIONS, exclude_reason, quant_settings, quantize_torch
from autotuner.runners.base import DEVICE_RESIDENT, TimedRunner
from autotuner.runners.knobs import SERVING, Knob, precisions
from autotuner.spec.schema import Spec

_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TorchRunner(TimedRunner):
    name = "torch"
    backends = ("torch-eager", "torch-compile")
    knobs: ClassVar[dict[str, Knob]] = {
        "precision": precisions("fp32", "fp16", "bf16", "int8", "int8-dynamic", calibrated=("int8",)),
        "device": Knob(
            "cpu",
            choices=("cpu", "cuda"),
            unknown="{name} {value!r} is not known to the {runner} runner ({choices})",
        ),
        "compile_mode": Knob(
            "default",
            choices=COMPILE_MODES,
            applies_to={"backend": ("torch-compile",)},
            where="to backend torch-compile only",
            strict=True,  # given at all: only torch-compile reads it
        ),
        "tf32": Knob(
            False,
            kind=bool,
            applies_to={"device": ("cuda",)},
            where="to device cuda (CPU kernels compute fp32 in fp32)",
        ),
        **int8_knobs(TORCH_CALIBRATIONS),
        **SERVING,
    }

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        reason = super().check(spec, config, caps)
        if reason:
            return reason
        if spec.model.onnx is not None:
            return "an ONNX model file runs only on onnxruntime-* backends"
        device = cls.knob(config, "device")
        precision = cls.knob(config, "precision")
        if device == "cuda":
            if not caps.get("cuda_devices"):
                return "device=cuda but torch sees no CUDA device on this machine"
            if precision == "int8-dynamic":
                return "dynamic int8 quantization in torch runs on CPU only"
            if precision == "int8":
                return (
                    "static int8 in torch runs its eager quantized kernels (x86/fbgemm) on CPU only; "
                    "on a GPU, onnxruntime-tensorrt runs the calibrated QDQ model"
                )
            if precision == "bf16" and not caps.get("cuda_bf16"):
                return "this GPU does not support bf16"
            if cls.knob(config, "backend") == "torch-compile":
                reason = _compiler_reason(caps)
                if reason:
                    return reason
        if precision == "int8" and cls.knob(config, "backend") == "torch-compile":
            return (
                "torch.compile cannot trace eager quantized modules (their ops have no meta kernels) "
                "and would run them uncompiled; static int8 runs on torch-eager"
            )
        return exclude_reason(cls.knob, config, ("none", "first-last"), "torch")

    def setup(self) -> None:
        import torch  # noqa: PLC0415 (heavy: torch)

        threads = self.knob(self.config, "threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        # Set either way: "fp32" means the same in every runner (TF32 only when tf32 is true).
        tf32 = bool(self.knob(self.config, "tf32"))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        self.dev = torch.device("cuda", self.device.cuda_index or 0) if self._cuda else None
        model = build_torch_model(self.spec)
        precision = self.knob(self.config, "precision")
        self.dtype = getattr(torch, _DTYPES[precision]) if precision in _DTYPES else None
        self.quantization: dict[str, Any] | None = None
        if precision == "int8-dynamic":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif precision == "int8":
            self.quantization = self._quantize_static(model)
        elif self.dtype is not None:
            model = model.to(self.dtype)
        if self.dev is not None:
            model = model.to(self.dev)
        if self.knob(self.config, "backend") == "torch-compile":
            mode = self.knob(self.config, "compile_mode")
            model = torch.compile(model, mode=None if mode == "default" else mode)
        self.model = model

    def _quantize_static(self, model: Any) -> dict[str, Any]:
        """Calibrate the Linear layers' input scales on the data's calibration set, in place."""

        specs = model_inputs(self.spec)
        torch = self.torch
        calibration = (
            tuple(torch.from_numpy(b[s.name]) for s in specs) for b in calibration_batches(self.spec)
        )
        settings = quant_settings(self.knob, self.config)
        rr = self.knob(self.config, "reduce_range")
        self.reduce_range_note = why_reduce_range(rr, self.config["backend"])
        return {
            **quantize_torch(model, calibration, settings),
            "settings": settings,
            "data_sha256": data_sets(self.spec).sha256,
        }

    def trial_info(self) -> dict[str, Any]:
        info = super().trial_info()
        if getattr(self, "reduce_range_note", None):
            info["reduce_range"] = self.reduce_range_note
        if getattr(self, "quantization", None):
            info["quantization"] = self.quantization
        return info

    @property
    def _cuda(self) -> bool:
        return self.knob(self.config, "device") == "cuda"

    @property
    def transfer_policy(self) -> str | None:
        # prepare() moves the batch to the device once; the step's outputs stay there.
        return DEVICE_RESIDENT if self._cuda else None

    def _tensors(self, batch: dict[str, np.ndarray]) -> list[Any]:
        """The batch as positional tensors, in the spec's input order (what forward() takes)."""

        torch = self.torch
        out = []
        for spec_input in model_inputs(self.spec):
            t = torch.from_numpy(batch[spec_input.name])
            if self.dtype is not None and t.is_floating_point():
                t = t.to(self.dtype)
            out.append(t.to(self.dev) if self.dev is not None else t)
        return out

    def prepare(self, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        tensors = self._tensors(batch)
        model, inference_mode = self.model, self.torch.inference_mode

        def step() -> object:
            with inference_mode():
                return model(*tensors)

        return step

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        with self.torch.inference_mode():
            out = first_tensor(self.model(*self._tensors(batch)))
        return out.float().cpu().numpy()

    def synchronize(self) -> None:
        if self.dev is not None:
            self.torch.cuda.synchronize(self.dev)

    @contextmanager
    def instance_stream(self) -> Iterator[None]:
        """A CUDA stream per serving instance (each runner is one instance), so that instances
        overlap on the GPU and one waits for its own work only. Not yet run on a GPU."""
        if self.dev is None:
            yield
            return
        torch = self.torch
        if getattr(self, "_stream", None) is None:
            self._stream = torch.cuda.Stream(self.dev)
        with torch.cuda.stream(self._stream):
            yield
        self._stream.synchronize()

    def activate(self) -> None:
        threads = self.knob(self.config, "threads")
        if threads:
            self.torch.set_num_threads(int(threads))
        if self.dev is not None:
            # After the first (compiling) call: max-autotune's benchmarking buffers are not the
            # steady state's peak, neither in torch's count nor in NVML's (which sees the
            # caching allocator's reserve, so the freed blocks go back to the driver first).

            gc.collect()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.dev)

    def device_peak_memory_mb(self) -> float | None:
        if self.dev is None:
            return None
        return self.torch.cuda.max_memory_allocated(self.dev) / 2**20

    def teardown(self) -> None:
        self.model = None

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        precision = cls.knob(config, "precision")
        settings: dict[str, Any] = {
            "device": cls.knob(config, "device"),
            "dtype": {"fp32": "float32", "int8": "float32", "int8-dynamic": "float32", **_DTYPES}[precision],
            "inference_mode": True,
        }
        if cls.knob(config, "device") == "cuda":
            tf32 = bool(cls.knob(config, "tf32"))
            settings["tf32"] = {
                "torch.backends.cuda.matmul.allow_tf32": tf32,
                "torch.backends.cudnn.allow_tf32": tf32,
            }
            settings["transfer_policy"] = DEVICE_RESIDENT
        if precision == "int8-dynamic":
            settings["quantization"] = (
                "torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)"
            )
        elif precision == "int8":
            settings["quantization"] = {
                "method": "static, eager mode (each Linear in a QuantWrapper, calibrated, converted)",
                **quant_settings(cls.knob, config),
                "code": "autotuner.models.quantization.quantize_torch(model, calibration_batches, settings)",
            }
            # Resolved on the machine that writes this; a serving CPU without VNNI wants it true.
            settings["reduce_range"] = why_reduce_range(cls.knob(config, "reduce_range"), config["backend"])
        if cls.knob(config, "backend") == "torch-compile":
            settings["compile"] = {"mode": cls.knob(config, "compile_mode")}
        if cls.knob(config, "threads"):
            settings["num_threads"] = int(config["threads"])
        return {"torch": settings}


def _compiler_reason(caps: dict[str, Any]) -> str | None:
    """Triton builds its CUDA launcher with a C compiler and Python's headers on first use; a
    slim CUDA image without them fails every torch-compile trial ("Failed to find C compiler").
    Caps from before this probe (no key) refuse nothing."""
    if "c_compiler" in caps and not caps["c_compiler"]:
        return "torch.compile on CUDA needs a C compiler for Triton (none found: set CC or install gcc)"
    if "python_headers" in caps and not caps["python_headers"]:
        return "torch.compile on CUDA needs Python's headers for Triton (install python3-dev)"
    return None
