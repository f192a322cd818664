"""The pure pieces of the onnxruntime runner: provider options, TensorRT engine caches, node
placement, output shapes, the device-memory read. Nothing here opens a session, so every piece
is tested without a GPU; knob defaults come from `config`, never from the runner.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.backends.onnxruntime.config import CPU, CUDA, PROVIDERS, TENSORRT, value
from autotuner.errors import UnsupportedConfig
from autotuner.files import pid_alive
from autotuner.models.builtins import model_inputs
from autotuner.spec.schema import Spec

# Stands for the folder a deployment keeps its TensorRT engines in (deploy_settings).
DEPLOY_CACHE = "<engine cache folder>"


def _flag(value: Any) -> str:
    return "1" if value else "0"


def provider_options(
    config: dict[str, Any],
    device_index: int,
    cache_root: Path,
    input_shapes: dict[str, tuple[int, ...]] | None,
    min_shapes: dict[str, tuple[int, ...]] | None = None,
    timing_root: Path | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """The providers (with their options, as the strings ORT parses) a config's session registers.

    TensorRT is registered with CUDA under it, so that nodes TensorRT does not take run on the
    GPU; `cache_root` is this config's own engine folder (see engine_folder_name), and
    `input_shapes` (the trial's, batch included) fixes the TensorRT profile to min = opt = max;
    with `min_shapes` (serving: batch 1) the profile is min = min_shapes, opt = max = input_shapes.
    `timing_root` is the timing cache shared by every config on this GPU model and TensorRT
    version (timing_folder_name); without it the timing cache lives in the engine folder.
    """
    provider = PROVIDERS[str(value(config, "backend"))]
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
        # The int8 model is QDQ (explicit quantization): TensorRT reads its scales, no table.
        "trt_int8_enable": _flag(value(config, "precision") == "int8"),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache_root),
        "trt_timing_cache_enable": _flag(timing),
        "trt_builder_optimization_level": str(int(value(config, "trt_builder_optimization_level"))),
        "trt_cuda_graph_enable": _flag(value(config, "cuda_graph")),
    }
    if timing:
        trt["trt_timing_cache_path"] = str(timing_root or cache_root)
    if input_shapes:
        profile = profile_shapes(input_shapes)
        trt["trt_profile_min_shapes"] = profile_shapes(min_shapes) if min_shapes else profile
        trt["trt_profile_opt_shapes"] = profile
        trt["trt_profile_max_shapes"] = profile
    return [(TENSORRT, trt), (CUDA, cuda)]


def profile_shapes(input_shapes: dict[str, tuple[int, ...]]) -> str:
    """ORT's TensorRT profile string: 'name:1x16,other:1x16'."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shape)}" for name, shape in input_shapes.items())


def input_shapes(spec: Spec, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Each input's shape in a trial of this batch size, in the spec's input order."""

    return {
        s.name: tuple(batch_size if d == "batch" else int(d) for d in s.shape) for s in model_inputs(spec)
    }


def engine_folder_name(
    model_sha256: str,
    config: dict[str, Any],
    input_shapes: dict[str, tuple[int, ...]],
    ort_version: str,
    min_shapes: dict[str, tuple[int, ...]] | None = None,
    build_env: dict[str, str | None] | None = None,
) -> str:
    """One TensorRT cache folder per engine: model content, precision, batch profile, the
    options that change what TensorRT builds, and `build_env` (the TensorRT version and GPU
    model: an engine of another TensorRT does not deserialize, and H100 and H200 are both sm90).
    A serving engine (min_shapes at batch 1) is named b1-N for its batch range."""
    precision = str(value(config, "precision"))
    key = {
        "model": model_sha256,
        "precision": precision,
        "profile": profile_shapes(input_shapes),
        "tf32": bool(value(config, "tf32")),
        "builder_optimization_level": int(value(config, "trt_builder_optimization_level")),
        "onnxruntime": ort_version,
    }
    if min_shapes:
        key["min_profile"] = profile_shapes(min_shapes)
    if build_env:
        key.update({f"build_{k}": v for k, v in build_env.items()})
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    if min_shapes:
        batch = f"{_batch_of(min_shapes)}-{_batch_of(input_shapes)}"
    else:
        batch = str(int(value(config, "batch_size")))
    return f"{model_sha256[:12]}-{precision}-b{batch}-{digest}"


def _batch_of(shapes: dict[str, tuple[int, ...]]) -> int:
    return int(next(iter(shapes.values()))[0]) if shapes else 1


def timing_folder_name(build_env: dict[str, str | None], ort_version: str) -> str:
    """The TensorRT timing cache folder every config on one GPU model and TensorRT version
    shares (layer timings do not depend on the model or the config)."""
    key = json.dumps({**build_env, "onnxruntime": ort_version}, sort_keys=True)
    return "timing-" + hashlib.sha256(key.encode()).hexdigest()[:12]


_TRT_DISTRIBUTIONS = (
    "tensorrt-cu13",
    "tensorrt_cu13_libs",
    "tensorrt-cu12",
    "tensorrt_cu12_libs",
    "tensorrt",
)


def tensorrt_version() -> str | None:
    """The TensorRT of the pip wheels, or None (a system TensorRT, or none)."""

    for name in _TRT_DISTRIBUTIONS:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return None


def gpu_model(rows: list[list[str]] | None, visible: str | None, cuda_index: int) -> str | None:
    """The name of CUDA device `cuda_index` from `nvidia-smi --query-gpu=index,uuid,name` rows,
    through CUDA_VISIBLE_DEVICES (`visible`: indices or UUIDs; PCI order, see worker_env)."""
    if not rows:
        return None
    shown = [v.strip() for v in (visible or "").split(",") if v.strip()]
    entry = shown[cuda_index] if cuda_index < len(shown) else (None if shown else str(cuda_index))
    for row in rows:
        if len(row) >= 3 and entry is not None and entry in (row[0], row[1]):
            return row[2]
    return None


class FolderLock:
    """An exclusive lock (flock) on a folder's `.lock` file: the shared TensorRT timing cache is
    read when an engine is built and written after it, by one session at a time."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self._fd: int | None = None

    def acquire(self, wait_s: float = 300.0, poll_s: float = 0.2) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(poll_s)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


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


# A CPU node whose float outputs all have at most this many elements is shape arithmetic (the
# attention scale sqrt(head_dim) that the TorchScript exporter computes from Shape, per layer),
# which ONNX Runtime places on the CPU on purpose when every input is a CPU tensor; it is no CPU
# share of the model's compute.
CPU_SCALAR_ELEMENTS = 64


def _float_elements(output_type_shape: list[dict[str, Any]]) -> list[int | None]:
    """The element count of each floating-point output (None where a dimension is not a number)."""
    counts: list[int | None] = []
    for out in output_type_shape:
        for type_name, dims in out.items():
            if not _is_float(type_name):
                continue
            try:
                counts.append(int(np.prod([int(d) for d in dims or []], dtype=np.int64)))
            except (TypeError, ValueError):
                counts.append(None)
    return counts


def node_placement(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Where the nodes of a profiled run ran: a count per provider, the op of every node that
    computed a floating-point tensor on the CPU (`cpu_compute`), and the ops of the CPU nodes
    exempted as scalar shape arithmetic (`cpu_scalars`: every float tensor they read or write has
    at most CPU_SCALAR_ELEMENTS elements). Integer shape arithmetic (Shape, Gather, Concat of
    int64 shapes) and float scalars computed from shapes (Cast, Sqrt, Div of the attention scale)
    do not count as a CPU share; a float tensor of unknown size does."""
    by_provider: dict[str, int] = {}
    cpu_compute: list[str] = []
    cpu_scalars: list[str] = []
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
        if provider != CPU:
            continue
        outputs = _float_elements(args.get("output_type_shape") or [])
        if not outputs:
            continue
        op = str(args.get("op_name", e.get("name")))
        # Inputs too: a Gemm from a [batch, hidden] activation to a few logits is compute.
        read_written = outputs + _float_elements(args.get("input_type_shape") or [])
        if all(n is not None and n <= CPU_SCALAR_ELEMENTS for n in read_written):
            cpu_scalars.append(op)
        else:
            cpu_compute.append(op)
    return {"by_provider": by_provider, "cpu_compute": cpu_compute, "cpu_scalars": cpu_scalars}


def refusal_of(message: str, provider: str) -> str | None:
    """An ORT session error that means this config cannot run as asked (not a crash), in words."""
    text = message.lower()
    # Older releases say "CUDA Graph", newer ones "cannot use the graph capture feature ... not
    # been partitioned to the CUDAExecutionProvider" (a CPU node, such as a Memcpy, in the graph).
    if "cuda graph" in text or "graph capture" in text:
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
