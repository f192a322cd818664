"""ONNX Runtime runner: CPU, CUDA and TensorRT providers; fp32 / fp16 / int8 (static, a QDQ model
calibrated on the spec's data) / int8-dynamic (CPU).

A requested provider that is not available never falls back silently: `check` refuses it from
the probed provider list, `setup` refuses a session whose first provider is not the one asked,
and on a GPU the first run is profiled so that a trial whose floating-point work would run partly
on the CPU is refused (the node placement is kept with the result). The provider options are
built by the pure `provider_options`; a TensorRT engine is cached in one folder per config,
built aside and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from autotuner.backends.onnxruntime.config import (
    CPU,
    CUDA,
    EXEC_MODES,
    KNOBS,
    OPT_LEVELS,
    PROVIDERS,
    TENSORRT,
)
from autotuner.backends.onnxruntime.options import (
    DEPLOY_CACHE,
    FolderLock,
    claim_engine_dir,
    engine_folder_name,
    gpu_model,
    input_shapes,
    node_placement,
    numpy_type,
    output_shapes,
    process_memory_mb,
    provider_options,
    publish_engine_dir,
    refusal_of,
    tensorrt_version,
    timing_folder_name,
)
from autotuner.errors import UnsupportedConfig
from autotuner.files import cache_dir, file_sha256
from autotuner.models.artifacts import onnx_path, quantization_record
from autotuner.models.int8_cpu import why_reduce_range
from autotuner.models.quantization import ORT_OPS, entropy_refusal, exclude_reason, ort_quantization
from autotuner.runners.base import DEVICE_RESIDENT, TimedRunner
from autotuner.runners.gpu_libraries import load_ort_libraries
from autotuner.runners.knobs import SERVING_KNOBS, Knob
from autotuner.spec.schema import Spec
from autotuner.subprocesses import nvidia_smi

# ORT's QDQ fusions (QLinearMatMul and friends) are CPU-provider transforms: the CUDA provider
# runs DequantizeLinear and then the fp32 kernel, so int8 there is measured as deployed, slower
# than fp32 (TensorRT fuses the QDQ model into int8 kernels).
INT8_ON_CUDA = (
    "simulated on onnxruntime-cuda: DequantizeLinear then fp32 kernels (no int8 GEMM), so slower "
    "than fp32; TensorRT runs the same QDQ model with int8 kernels"
)


class OnnxRuntimeRunner(TimedRunner):
    name = "onnxruntime"
    backends = tuple(PROVIDERS)
    knobs: ClassVar[dict[str, Knob]] = KNOBS  # declared in config.py

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
        # Only a provider the load probe tried and saw fail: caps merged from another machine's
        # probe (a Ray GPU node's providers, the driver's load probe) refuse nothing here.
        errors = caps.get("ort_provider_errors") or {}
        if provider in errors:
            return f"{provider} is built into onnxruntime here but does not load: {errors[provider]}"
        precision = cls.knob(config, "precision")
        if precision == "int8-dynamic" and backend != "onnxruntime-cpu":
            return "dynamic int8 (MatMulInteger) runs on CPU kernels; on GPUs use int8 (calibrated QDQ)"
        reason = exclude_reason(cls.knob, config, runner="onnxruntime")
        if reason:
            return reason
        if precision == "int8" and cls.knob(config, "calibration") == "entropy":
            reason = entropy_refusal()
            if reason:
                return reason
        if spec.scenario == "serving" and cls.knob(config, "cuda_graph"):
            return "cuda_graph replays one input shape; the serving scenario runs every batch size"
        return _knob_reason(cls, config, provider)

    @classmethod
    def needs_gpu(cls, config: dict[str, Any]) -> bool:
        return PROVIDERS.get(str(cls.knob(config, "backend")), CPU) != CPU

    def setup(self) -> None:
        import onnxruntime as ort  # noqa: PLC0415 (heavy: onnxruntime)

        backend = self.config["backend"]
        precision = self.knob(self.config, "precision")
        self.provider = PROVIDERS[backend]
        if self.provider != CPU:  # CUDA / cuDNN / TensorRT of pip wheels, before the session
            load_ort_libraries(ort)
        path = self.model_file = self._model_file(backend, precision)
        self.ort = ort
        self.binding: Any = None
        # One binding per batch size (serving binds 1..max_batch_size): (binding, inputs, outputs).
        self._bound: dict[tuple[Any, ...], tuple[Any, dict[str, Any], list[Any]]] = {}
        self.placement: dict[str, Any] | None = None
        self._engine: tuple[Path, Path] | None = None  # (temporary folder, its published name)
        self._profile_dir: Path | None = None
        so = self._session_options(ort)
        shapes = input_shapes(self.spec, int(self.knob(self.config, "batch_size")))
        min_shapes = None
        if self.spec.scenario == "serving":
            # The batcher runs every size from 1 to max_batch_size: one engine for that range,
            # tuned for the full batch, instead of a rebuild at each new size.
            shapes = input_shapes(self.spec, int(self.knob(self.config, "max_batch_size")))
            min_shapes = input_shapes(self.spec, 1)
        self._timing_lock: FolderLock | None = None
        cache, timing_root = self._engine_folders(ort, path, shapes, min_shapes)
        if self._on_gpu and not self.knob(self.config, "cuda_graph"):
            # The first run is profiled to learn where each node ran (ORT stops profiling after it).
            self._profile_dir = Path(tempfile.mkdtemp(prefix="autotune-ort-profile-"))
            so.enable_profiling = True
            so.profile_file_prefix = str(self._profile_dir / "first-run")
        providers = provider_options(self.config, self._device_index, cache, shapes, min_shapes, timing_root)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:
            reason = refusal_of(str(e), self.provider)
            if reason:
                raise UnsupportedConfig(reason) from None
            raise
        active = self.session.get_providers()
        if not active or active[0] != self.provider:
            raise UnsupportedConfig(
                f"onnxruntime created the session on {active[0] if active else 'nothing'} "
                f"instead of {self.provider}; not accepted as a silent fallback"
            )

    def _model_file(self, backend: str, precision: str) -> Path:
        """The ONNX file this config runs (an int8 variant records how it was quantized)."""

        self.quantization: dict[str, Any] | None = None
        # Symmetric int8 activations where TensorRT or the CUDA provider runs the QDQ model;
        # 7-bit weights where this CPU's int8 kernels saturate (reduce_range).
        quant = ort_quantization(self.knob, self.config)
        if quant is not None:
            self.reduce_range_note = why_reduce_range(self.knob(self.config, "reduce_range"), backend)
        if precision == "int8":
            path = onnx_path(self.spec, "int8", quant)
            self.quantization = quantization_record(path)
            return path
        # TensorRT builds its own fp16 engine from the fp32 graph.
        return onnx_path(self.spec, "fp32" if backend == "onnxruntime-tensorrt" else precision, quant)

    def _session_options(self, ort: Any) -> Any:
        so = ort.SessionOptions()
        threads = self.knob(self.config, "threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = int(self.knob(self.config, "inter_op_threads"))
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, OPT_LEVELS[self.knob(self.config, "graph_optimization_level")]
        )
        so.execution_mode = getattr(ort.ExecutionMode, EXEC_MODES[self.knob(self.config, "execution_mode")])
        so.log_severity_level = 3
        return so

    def _engine_folders(self, ort: Any, path: Path, shapes: Any, min_shapes: Any) -> tuple[Path, Path | None]:
        """TensorRT's engine folder (claimed for this build) and the shared timing cache (when
        this process holds its lock); (Path(), None) for the other providers."""

        if self.provider != TENSORRT:
            return Path(), None
        timing_root: Path | None = None
        env = self._build_env()
        final = (
            cache_dir()
            / "tensorrt"
            / engine_folder_name(file_sha256(path), self.config, shapes, ort.__version__, min_shapes, env)
        )
        if self.knob(self.config, "trt_timing_cache"):
            shared = cache_dir() / "tensorrt" / timing_folder_name(env, ort.__version__)
            lock = FolderLock(shared)
            if lock.acquire():  # held until the engine is built (the first run)
                timing_root, self._timing_lock = shared, lock
        cache = claim_engine_dir(final)
        if cache != final:
            self._engine = (cache, final)
        return cache, timing_root

    def _build_env(self) -> dict[str, str | None]:
        """What an engine depends on beyond the model and the options: TensorRT and the GPU."""

        rows = nvidia_smi("gpu", "index,uuid,name")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return {"tensorrt": tensorrt_version(), "gpu": gpu_model(rows, visible, self._device_index)}

    @property
    def _on_gpu(self) -> bool:
        return self.provider != CPU

    @property
    def _device_index(self) -> int:
        return int(self.device.cuda_index or 0)

    @property
    def transfer_policy(self) -> str | None:
        return DEVICE_RESIDENT if self.needs_gpu(self.config) else None

    def prepare(self, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        sess = self.session
        if not self._on_gpu:
            feeds = dict(batch)
            return lambda: sess.run(None, feeds)
        binding = self._io_binding(batch)
        if self.placement is None:
            sess.run_with_iobinding(binding)  # builds the TensorRT engine; the profiled run
            self.placement = self._read_placement()
            self._publish_engine()
            cpu = self.placement.get("cpu_compute") or []
            if cpu:
                raise UnsupportedConfig(
                    f"{len(cpu)} node(s) computing floating-point tensors would run on the CPU "
                    f"({', '.join(sorted(set(cpu))[:8])}) instead of {self.provider}; "
                    "a measurement never falls back"
                )

        def step() -> object:
            self.binding = binding  # what synchronize() waits for: this batch size's outputs
            return sess.run_with_iobinding(binding)

        return step

    def _io_binding(self, batch: dict[str, np.ndarray]) -> Any:
        """Inputs copied to the device once, outputs kept there (fixed buffers for a CUDA graph);
        kept as this batch size's binding."""
        ort, sess, idx = self.ort, self.session, self._device_index
        binding = sess.io_binding()
        inputs: dict[str, Any] = {}
        outputs: list[Any] = []
        for name, arr in batch.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", idx)
            binding.bind_ortvalue_input(name, value)
            inputs[name] = value
        if self.knob(self.config, "cuda_graph"):
            shapes = output_shapes(
                [(i.name, i.shape) for i in sess.get_inputs()],
                [(o.name, o.shape) for o in sess.get_outputs()],
                {k: tuple(v.shape) for k, v in batch.items()},
            )
            for out in sess.get_outputs():
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    shapes[out.name], numpy_type(out.type), "cuda", idx
                )
                binding.bind_ortvalue_output(out.name, value)
                outputs.append(value)
        else:
            for out in sess.get_outputs():
                binding.bind_output(out.name, "cuda", idx)
        self._bound[_shape_key(batch)] = (binding, inputs, outputs)
        self.binding = binding
        return binding

    def _read_placement(self) -> dict[str, Any]:
        if self._profile_dir is None:  # a CUDA graph: ORT refuses a session with compute elsewhere
            return {
                "by_provider": {},
                "cpu_compute": [],
                "cpu_scalars": [],
                "note": f"CUDA graph: compute on {self.provider}",
            }
        try:
            events = json.loads(Path(self.session.end_profiling()).read_text())
        finally:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None
        return node_placement(events)

    def _publish_engine(self) -> None:
        if self._engine is not None:
            publish_engine_dir(*self._engine)
            self._engine = None
        self._release_timing()

    def _release_timing(self) -> None:
        lock = getattr(self, "_timing_lock", None)
        if lock is not None:
            lock.release()
            self._timing_lock = None

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if not self._on_gpu:
            return np.asarray(self.session.run(None, batch)[0], dtype=np.float32)
        # Its own binding, the one of this batch's size: never the last served step's, whose
        # inputs hold other rows (serving binds every size from 1 to max_batch_size).
        if _shape_key(batch) not in self._bound:
            self.prepare(batch)
        binding, inputs, _ = self._bound[_shape_key(batch)]
        for name, arr in batch.items():  # same buffers: a CUDA graph replays on these addresses
            inputs[name].update_inplace(np.ascontiguousarray(arr))
        self.session.run_with_iobinding(binding)
        self.binding = binding
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def synchronize(self) -> None:
        if self.binding is not None:
            self.binding.synchronize_outputs()

    def device_peak_memory_mb(self) -> float | None:
        if not self._on_gpu:
            return None

        return process_memory_mb(nvidia_smi("compute-apps", "pid,used_memory"), os.getpid())

    def trial_info(self) -> dict[str, Any]:
        info = super().trial_info()
        if getattr(self, "placement", None) is not None:
            info["node_placement"] = self.placement
        if getattr(self, "reduce_range_note", None):
            info["reduce_range"] = self.reduce_range_note
        if getattr(self, "quantization", None):
            info["quantization"] = self.quantization
            if getattr(self, "provider", None) == CUDA:
                info["int8_note"] = INT8_ON_CUDA
        if getattr(self, "model_file", None) is not None and self.model_file.exists():
            info["model_file_mb"] = round(self.model_file.stat().st_size / 2**20, 2)
        return info

    def teardown(self) -> None:
        self.session = None
        self.binding = None
        self._bound = {}
        if self._engine is not None:  # never published (the first run did not happen)
            shutil.rmtree(self._engine[0], ignore_errors=True)
        self._release_timing()
        if self._profile_dir is not None:
            shutil.rmtree(self._profile_dir, ignore_errors=True)

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        backend = config["backend"]
        precision = cls.knob(config, "precision")
        measured = provider_options(config, 0, Path(DEPLOY_CACHE), None)
        listed = {name for name, _ in measured}
        fallbacks = [p for p in (CUDA, CPU) if p not in listed] if PROVIDERS[backend] != CPU else []
        settings: dict[str, Any] = {
            # The tuned provider first, then stated fallbacks for deployment; the measurement
            # itself never fell back (a CPU share was refused).
            "providers": [{"name": n, "options": o} for n, o in measured] + [{"name": n} for n in fallbacks],
            "session_options": {
                "intra_op_num_threads": int(cls.knob(config, "threads") or 0),
                "inter_op_num_threads": int(cls.knob(config, "inter_op_threads")),
                "graph_optimization_level": OPT_LEVELS[cls.knob(config, "graph_optimization_level")],
                "execution_mode": EXEC_MODES[cls.knob(config, "execution_mode")],
            },
            "io_binding": PROVIDERS[backend] != CPU,
        }
        if PROVIDERS[backend] != CPU:
            settings["transfer_policy"] = DEVICE_RESIDENT
        if backend == "onnxruntime-tensorrt" and any(k in config for k in SERVING_KNOBS):
            top = int(cls.knob(config, "max_batch_size"))
            settings["trt_profile_shapes"] = (
                f"min = each input's shape at batch 1, opt = max = at batch {top} (max_batch_size) "
                "(trt_profile_min_shapes / _opt_ / _max_ as 'name:1x16,other:1x16')"
            )
        elif backend == "onnxruntime-tensorrt":
            batch = int(cls.knob(config, "batch_size"))
            settings["trt_profile_shapes"] = (
                f"min = opt = max = each input's shape at batch {batch} "
                "(trt_profile_min_shapes / _opt_ / _max_ as 'name:1x16,other:1x16')"
            )
        quant = ort_quantization(cls.knob, config)
        if precision == "int8-dynamic":
            rr = bool(quant and quant["reduce_range"])
            settings["quantization"] = (
                "onnxruntime.quantization.quantize_dynamic(fp32_model, int8_model, "
                f"weight_type=QuantType.QInt8, reduce_range={rr})"
            )
        elif precision == "int8":
            settings["quantization"] = {
                "method": "static, QDQ format (onnxruntime.quantization.quantize_static)",
                **(quant or {}),
                "op_types": ORT_OPS,
            }
        if quant is not None:
            # Resolved on the machine that writes this (the tuning machine, as a rule): a
            # serving CPU without VNNI wants 7-bit weights whatever the tuning CPU had.
            settings["reduce_range"] = why_reduce_range(cls.knob(config, "reduce_range"), backend)
        elif precision == "fp16" and backend != "onnxruntime-tensorrt":
            settings["conversion"] = (
                "onnxruntime.transformers.float16.convert_float_to_float16(model, keep_io_types=True)"
            )
        return {"onnxruntime": settings}


def _shape_key(batch: dict[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """What tells one batch size's binding from another: every input's shape (the batch axis
    need not be the first)."""
    return tuple((name, tuple(arr.shape)) for name, arr in batch.items())


def _knob_reason(cls: type[TimedRunner], config: dict[str, Any], provider: str) -> str | None:
    """Why the ORT knobs of a config cannot run on this provider, beyond what their declarations
    say (config.KNOBS, checked by the base), or None."""
    io = config.get("io_binding")
    if provider == CPU:
        return "io_binding applies to the CUDA and TensorRT providers" if io else None
    if io is False:
        return (
            "on CUDA and TensorRT every trial is timed with IO binding (inputs copied to the device "
            "once, outputs left there), so io_binding: false would not be what was measured"
        )
    if cls.knob(config, "execution_mode") == "parallel":
        return "execution_mode parallel is run sequentially by ONNX Runtime on CUDA and TensorRT"
    if provider == TENSORRT and not cls.knob(config, "tf32"):
        return (
            "TensorRT builds fp32 layers with TF32 and its ONNX Runtime provider has no option to "
            "turn that off; give tf32: true to measure TensorRT"
        )
    return None
