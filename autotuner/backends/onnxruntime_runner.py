"""ONNX Runtime runner: CPU, CUDA and TensorRT providers; fp32 / fp16 / dynamic int8.

A requested provider that is not available never falls back silently: `check` refuses it from
the probed provider list, `setup` refuses a session whose first provider is not the one asked,
and on a GPU the first run is profiled so that a trial whose floating-point work would run partly
on the CPU is refused (the node placement is kept with the result). The provider options are
built by the pure `provider_options`; a TensorRT engine is cached in one folder per config,
built aside and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from autotuner.errors import UnsupportedConfig
from autotuner.runners.base import DEVICE_RESIDENT, SERVING_KNOBS, TimedRunner, backend_of
from autotuner.spec.schema import Spec

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
GPU_ONLY = (CUDA, TENSORRT)
APPLIES_TO: dict[str, tuple[tuple[str, ...], str]] = {
    "tf32": (GPU_ONLY, "the CUDA and TensorRT providers (CPU kernels compute fp32 in fp32)"),
    "cuda_graph": (GPU_ONLY, "the CUDA and TensorRT providers"),
    "cudnn_conv_algo_search": (GPU_ONLY, "the CUDA provider (and its share under TensorRT)"),
    "trt_builder_optimization_level": ((TENSORRT,), "the TensorRT provider"),
    "trt_timing_cache": ((TENSORRT,), "the TensorRT provider"),
}
BOOL_KNOBS = ("tf32", "cuda_graph", "trt_timing_cache")
# Stands for the folder a deployment keeps its TensorRT engines in (deploy_settings).
DEPLOY_CACHE = "<engine cache folder>"


class OnnxRuntimeRunner(TimedRunner):
    name = "onnxruntime"
    backends = tuple(PROVIDERS)
    knobs: ClassVar[dict[str, Any]] = {
        "graph_optimization_level": "all",
        "inter_op_threads": 1,
        "execution_mode": "sequential",
        # None: the provider's way. A GPU trial is always timed through IO binding (the
        # transfer policy), so the knob no longer changes a measurement: true is accepted on
        # CUDA / TensorRT, false is refused there, and true is refused on the CPU.
        "io_binding": None,
        "tf32": False,
        "cuda_graph": False,
        "cudnn_conv_algo_search": "exhaustive",
        "trt_builder_optimization_level": 3,
        "trt_timing_cache": True,
        **SERVING_KNOBS,
    }
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {
        "graph_optimization_level": tuple(OPT_LEVELS),
        "execution_mode": tuple(EXEC_MODES),
        "tf32": (True, False),
        "cuda_graph": (True, False),
        "cudnn_conv_algo_search": CONV_ALGO_SEARCH,
        "trt_builder_optimization_level": TRT_OPT_LEVELS,
        "trt_timing_cache": (True, False),
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
        if spec.scenario == "serving" and cls.value(config, "cuda_graph"):
            return "cuda_graph replays one input shape; the serving scenario runs every batch size"
        return _knob_reason(cls, config, provider)

    @classmethod
    def needs_gpu(cls, config: dict[str, Any]) -> bool:
        return PROVIDERS.get(str(cls.value(config, "backend")), CPU) != CPU

    def setup(self) -> None:
        import onnxruntime as ort

        from autotuner.files import cache_dir
        from autotuner.models.artifacts import onnx_path

        backend = self.config["backend"]
        precision = self.value(self.config, "precision")
        # TensorRT builds its own fp16 engine from the fp32 graph.
        path = onnx_path(self.spec, "fp32" if backend == "onnxruntime-tensorrt" else precision)
        self.provider = PROVIDERS[backend]
        self.ort = ort
        self.binding: Any = None
        self.placement: dict[str, Any] | None = None
        self._engine: tuple[Path, Path] | None = None  # (temporary folder, its published name)
        self._profile_dir: Path | None = None
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
        shapes = input_shapes(self.spec, int(self.value(self.config, "batch_size")))
        cache = Path()
        if self.provider == TENSORRT:
            final = (
                cache_dir()
                / "tensorrt"
                / engine_folder_name(file_sha256(path), self.config, shapes, ort.__version__)
            )
            cache = claim_engine_dir(final)
            if cache != final:
                self._engine = (cache, final)
        if self._on_gpu and not self.value(self.config, "cuda_graph"):
            # The first run is profiled to learn where each node ran (ORT stops profiling after it).
            self._profile_dir = Path(tempfile.mkdtemp(prefix="autotune-ort-profile-"))
            so.enable_profiling = True
            so.profile_file_prefix = str(self._profile_dir / "first-run")
        providers = provider_options(self.config, self._device_index, cache, shapes)
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
        binding = self._bind(batch)
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

    def _bind(self, batch: dict[str, np.ndarray]) -> Any:
        """Inputs copied to the device once, outputs kept there (fixed buffers for a CUDA graph)."""
        ort, sess, idx = self.ort, self.session, self._device_index
        binding = sess.io_binding()
        self._inputs = {}
        for name, arr in batch.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", idx)
            binding.bind_ortvalue_input(name, value)
            self._inputs[name] = value
        if self.value(self.config, "cuda_graph"):
            shapes = output_shapes(
                [(i.name, i.shape) for i in sess.get_inputs()],
                [(o.name, o.shape) for o in sess.get_outputs()],
                {k: tuple(v.shape) for k, v in batch.items()},
            )
            self._outputs = []
            for out in sess.get_outputs():
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    shapes[out.name], numpy_type(out.type), "cuda", idx
                )
                binding.bind_ortvalue_output(out.name, value)
                self._outputs.append(value)
        else:
            for out in sess.get_outputs():
                binding.bind_output(out.name, "cuda", idx)
        self.binding = binding
        return binding

    def _read_placement(self) -> dict[str, Any]:
        if self._profile_dir is None:  # a CUDA graph: ORT refuses a session with compute elsewhere
            return {"by_provider": {}, "cpu_compute": [], "note": f"CUDA graph: compute on {self.provider}"}
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

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if not self._on_gpu:
            return np.asarray(self.session.run(None, batch)[0], dtype=np.float32)
        if self.binding is None:
            self.prepare(batch)
        for name, arr in batch.items():  # same buffers: a CUDA graph replays on these addresses
            self._inputs[name].update_inplace(np.ascontiguousarray(arr))
        self.session.run_with_iobinding(self.binding)
        return np.asarray(self.binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def synchronize(self) -> None:
        if self.binding is not None:
            self.binding.synchronize_outputs()

    def device_peak_memory_mb(self) -> float | None:
        if not self._on_gpu:
            return None
        from autotuner.processes import nvidia_smi

        return process_memory_mb(nvidia_smi("compute-apps", "pid,used_memory"), os.getpid())

    def trial_info(self) -> dict[str, Any]:
        info = super().trial_info()
        if getattr(self, "placement", None) is not None:
            info["node_placement"] = self.placement
        return info

    def teardown(self) -> None:
        self.session = None
        self.binding = None
        if self._engine is not None:  # never published (the first run did not happen)
            shutil.rmtree(self._engine[0], ignore_errors=True)
        if self._profile_dir is not None:
            shutil.rmtree(self._profile_dir, ignore_errors=True)

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        backend = config["backend"]
        precision = cls.value(config, "precision")
        measured = provider_options(config, 0, Path(DEPLOY_CACHE), None)
        listed = {name for name, _ in measured}
        fallbacks = [p for p in (CUDA, CPU) if p not in listed] if PROVIDERS[backend] != CPU else []
        settings: dict[str, Any] = {
            # The tuned provider first, then stated fallbacks for deployment; the measurement
            # itself never fell back (a CPU share was refused).
            "providers": [{"name": n, "options": o} for n, o in measured] + [{"name": n} for n in fallbacks],
            "session_options": {
                "intra_op_num_threads": int(cls.value(config, "threads") or 0),
                "inter_op_num_threads": int(cls.value(config, "inter_op_threads")),
                "graph_optimization_level": OPT_LEVELS[cls.value(config, "graph_optimization_level")],
                "execution_mode": EXEC_MODES[cls.value(config, "execution_mode")],
            },
            "io_binding": PROVIDERS[backend] != CPU,
        }
        if PROVIDERS[backend] != CPU:
            settings["transfer_policy"] = DEVICE_RESIDENT
        if backend == "onnxruntime-tensorrt":
            batch = int(cls.value(config, "batch_size"))
            settings["trt_profile_shapes"] = (
                f"min = opt = max = each input's shape at batch {batch} "
                "(trt_profile_min_shapes / _opt_ / _max_ as 'name:1x16,other:1x16')"
            )
        if precision == "int8":
            settings["quantization"] = (
                "onnxruntime.quantization.quantize_dynamic(fp32_model, int8_model, "
                "weight_type=QuantType.QInt8)"
            )
        elif precision == "fp16" and backend != "onnxruntime-tensorrt":
            settings["conversion"] = (
                "onnxruntime.transformers.float16.convert_float_to_float16(model, keep_io_types=True)"
            )
        return {"onnxruntime": settings}


def _knob_reason(cls: type[TimedRunner], config: dict[str, Any], provider: str) -> str | None:
    """Why the ORT knobs of a config cannot run on this provider, or None."""
    level = cls.value(config, "graph_optimization_level")
    if level not in OPT_LEVELS:
        return f"graph_optimization_level {level!r} is not one of {', '.join(OPT_LEVELS)}"
    mode = cls.value(config, "execution_mode")
    if mode not in EXEC_MODES:
        return f"execution_mode {mode!r} is not one of {', '.join(EXEC_MODES)}"
    for name in BOOL_KNOBS:
        if not isinstance(cls.value(config, name), bool):
            return f"{name} must be true or false, not {cls.value(config, name)!r}"
    search = cls.value(config, "cudnn_conv_algo_search")
    if search not in CONV_ALGO_SEARCH:
        return f"cudnn_conv_algo_search {search!r} is not one of {', '.join(CONV_ALGO_SEARCH)}"
    opt = cls.value(config, "trt_builder_optimization_level")
    if isinstance(opt, bool) or opt not in TRT_OPT_LEVELS:
        return f"trt_builder_optimization_level {opt!r} is not one of 0 to 5"
    for name, (providers, where) in APPLIES_TO.items():
        if provider not in providers and cls.value(config, name) != cls.knobs[name]:
            return f"{name} applies to {where}"
    io = config.get("io_binding")
    if provider == CPU:
        return "io_binding applies to the CUDA and TensorRT providers" if io else None
    if io is False:
        return (
            "on CUDA and TensorRT every trial is timed with IO binding (inputs copied to the device "
            "once, outputs left there), so io_binding: false would not be what was measured"
        )
    if mode == "parallel":
        return "execution_mode parallel is run sequentially by ONNX Runtime on CUDA and TensorRT"
    if provider == TENSORRT and not cls.value(config, "tf32"):
        return (
            "TensorRT builds fp32 layers with TF32 and its ONNX Runtime provider has no option to "
            "turn that off; give tf32: true to measure TensorRT"
        )
    return None


def _flag(value: Any) -> str:
    return "1" if value else "0"


def provider_options(
    config: dict[str, Any],
    device_index: int,
    cache_root: Path,
    input_shapes: dict[str, tuple[int, ...]] | None,
) -> list[tuple[str, dict[str, str]]]:
    """The providers (with their options, as the strings ORT parses) a config's session registers.

    TensorRT is registered with CUDA under it, so that nodes TensorRT does not take run on the
    GPU; `cache_root` is this config's own engine folder (see engine_folder_name), and
    `input_shapes` (the trial's, batch included) fixes the TensorRT profile to min = opt = max.
    """
    provider = PROVIDERS[backend_of(config)]
    value = OnnxRuntimeRunner.value
    if provider == CPU:
        return [(CPU, {})]
    cuda = {
        "device_id": str(device_index),
        "use_tf32": _flag(value(config, "tf32")),
        "cudnn_conv_algo_search": str(value(config, "cudnn_conv_algo_search")).upper(),
    }
    if provider == CUDA:
        return [(CUDA, {**cuda, "enable_cuda_graph": _flag(value(config, "cuda_graph"))})]
    timing = bool(value(config, "trt_timing_cache"))
    trt = {
        "device_id": str(device_index),
        "trt_fp16_enable": _flag(value(config, "precision") == "fp16"),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache_root),
        "trt_timing_cache_enable": _flag(timing),
        "trt_builder_optimization_level": str(int(value(config, "trt_builder_optimization_level"))),
        "trt_cuda_graph_enable": _flag(value(config, "cuda_graph")),
    }
    if timing:
        trt["trt_timing_cache_path"] = str(cache_root)
    if input_shapes:
        profile = profile_shapes(input_shapes)
        for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
            trt[key] = profile
    return [(TENSORRT, trt), (CUDA, cuda)]


def profile_shapes(input_shapes: dict[str, tuple[int, ...]]) -> str:
    """ORT's TensorRT profile string: 'name:1x16,other:1x16'."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shape)}" for name, shape in input_shapes.items())


def input_shapes(spec: Spec, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Each input's shape in a trial of this batch size, in the spec's input order."""
    from autotuner.models.builtins import model_inputs

    return {
        s.name: tuple(batch_size if d == "batch" else int(d) for d in s.shape) for s in model_inputs(spec)
    }


def engine_folder_name(
    model_sha256: str, config: dict[str, Any], input_shapes: dict[str, tuple[int, ...]], ort_version: str
) -> str:
    """One TensorRT cache folder per engine: model content, precision, batch profile and the
    options that change what TensorRT builds."""
    value = OnnxRuntimeRunner.value
    precision = str(value(config, "precision"))
    key = {
        "model": model_sha256,
        "precision": precision,
        "profile": profile_shapes(input_shapes),
        "tf32": bool(value(config, "tf32")),
        "builder_optimization_level": int(value(config, "trt_builder_optimization_level")),
        "onnxruntime": ort_version,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    batch = int(value(config, "batch_size"))
    return f"{model_sha256[:12]}-{precision}-b{batch}-{digest}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_TMP_SUFFIX = ".tmp"


def claim_engine_dir(final: Path) -> Path:
    """The folder a trial's session reads and writes its TensorRT caches in: `final` itself when
    it was published (reused as it is), else a fresh temporary sibling, created with its parents,
    that `publish_engine_dir` renames into place once the engine is built. Siblings left by dead
    trials are removed."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    return Path(
        tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=final.parent)
    )


def publish_engine_dir(tmp: Path, final: Path) -> None:
    """Rename a built engine folder into place; when another trial published it first, its
    engine is the same one and this copy is dropped."""
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(final: Path) -> None:
    from autotuner.files import pid_alive

    for sibling in final.parent.glob(f".{final.name}.*{_TMP_SUFFIX}"):
        pid = sibling.name[len(final.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


def output_shapes(
    inputs: list[tuple[str, list[Any]]],
    outputs: list[tuple[str, list[Any]]],
    fed: dict[str, tuple[int, ...]],
) -> dict[str, tuple[int, ...]]:
    """The outputs' shapes before the first run (a CUDA graph needs fixed output buffers): each
    symbolic dimension is the size the fed inputs give it."""
    sizes: dict[str, int] = {}
    for name, shape in inputs:
        for dim, size in zip(shape, fed.get(name, ()), strict=False):
            if isinstance(dim, str):
                sizes[dim] = int(size)
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in outputs:
        dims = []
        for dim in shape:
            if isinstance(dim, int) and dim >= 0:
                dims.append(dim)
            elif isinstance(dim, str) and dim in sizes:
                dims.append(sizes[dim])
            else:
                raise UnsupportedConfig(
                    f"cuda_graph needs every output's shape before the first run; output {name!r} "
                    f"has dimension {dim!r}, which no input's shape gives"
                )
        out[name] = tuple(dims)
    return out


_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def numpy_type(ort_type: str) -> Any:
    if ort_type not in _NUMPY_TYPES:
        raise UnsupportedConfig(f"cuda_graph: an output of type {ort_type} cannot be pre-allocated here")
    return _NUMPY_TYPES[ort_type]


def _is_float(type_name: str) -> bool:
    return "float" in type_name or type_name == "double"


def node_placement(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Where the nodes of a profiled run ran: a count per provider, and the op of every node that
    computed a floating-point tensor on the CPU. Integer shape arithmetic that ORT places on the
    CPU on purpose (Shape, Gather, Concat of int64 shapes) does not count as a CPU share."""
    by_provider: dict[str, int] = {}
    cpu_compute: list[str] = []
    for e in events:
        args = e.get("args") or {}
        if (
            e.get("cat") != "Node"
            or "provider" not in args
            or not str(e.get("name", "")).endswith("_kernel_time")
        ):
            continue
        provider = str(args["provider"])
        by_provider[provider] = by_provider.get(provider, 0) + 1
        if provider == CPU:
            types = [t for out in args.get("output_type_shape") or [] for t in out]
            if any(_is_float(t) for t in types):
                cpu_compute.append(str(args.get("op_name", e.get("name"))))
    return {"by_provider": by_provider, "cpu_compute": cpu_compute}


def refusal_of(message: str, provider: str) -> str | None:
    """An ORT session error that means this config cannot run as asked (not a crash), in words."""
    text = message.lower()
    if "cuda graph" in text:
        return f"cuda_graph: ONNX Runtime cannot capture this model on {provider} ({message.strip()[:200]})"
    return None


def process_memory_mb(rows: list[list[str]] | None, pid: int) -> float | None:
    """A process's GPU memory from `nvidia-smi --query-compute-apps=pid,used_memory` rows, or None
    when it cannot be read: no nvidia-smi, the pid not listed (another pid namespace), or a value
    such as '[N/A]' or '[Insufficient Permissions]' (MIG, containers). Rows of several GPUs add up."""
    total, found = 0.0, False
    for row in rows or []:
        if len(row) < 2 or row[0].strip() != str(pid):
            continue
        cell = row[1].strip().removesuffix("MiB").strip()
        try:
            used = float(cell)
        except ValueError:
            return None
        if not np.isfinite(used) or used < 0:
            return None
        total, found = total + used, True
    return total if found else None
