"""`autotune export --format triton`: one model of a Triton model repository, for an onnxruntime config.

DIR/MODEL/config.pbtxt and DIR/MODEL/1/model.onnx, the ONNX file the config's trials ran. The
text is written here by hand (tritonclient is no dependency of autotune); the tests parse it with
Triton's own model_config.proto classes. The parameter keys are those of Triton's
onnxruntime_backend: `intra_op_thread_count`, `inter_op_thread_count`, `execution_mode` ("0"
sequential, "1" parallel) and `optimization { graph { level } }` (-1 basic, 1 extended, 2 none,
0 or unset: all), TensorRT's options under `gpu_execution_accelerator` "tensorrt" and the CUDA
provider's under "cuda".
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autotuner._version import __version__
from autotuner.files import atomic_write, atomic_write_text
from autotuner.models.builtins import model_inputs
from autotuner.report.export import (
    TENSORRT_PROVIDER,
    OnnxDeployment,
    chosen_config,
    fallback_note,
    onnx_deployment,
    profile_shapes,
)
from autotuner.runners.base import backend_of
from autotuner.runners.registry import runner_for
from autotuner.search.pick import Pick
from autotuner.spec.schema import Spec

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DATA_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
}
# onnx.TensorProto.DataType -> Triton's DataType.
ONNX_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
GRAPH_LEVELS = {"ORT_ENABLE_BASIC": -1, "ORT_ENABLE_EXTENDED": 1, "ORT_DISABLE_ALL": 2, "ORT_ENABLE_ALL": 0}
EXECUTION_MODES = {"ORT_SEQUENTIAL": "0", "ORT_PARALLEL": "1"}
# The serving knobs' defaults where the runner does not state them.
SERVING_DEFAULTS = {"max_batch_size": 8, "batch_timeout_ms": 0, "instances": 1}
# TensorRT options that Triton sets itself (device_id) or that name this machine's folders.
TRT_LEFT_OUT = ("device_id", "trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_path")
GPU_NOTES = [
    "Triton's onnxruntime backend registers TensorRT (the tensorrt accelerator, where listed), then",
    "CUDA for a KIND_GPU instance (options of the cuda accelerator), and ONNX Runtime runs any node",
    "neither takes on its CPU provider: that is the stated fallback. TensorRT engines are built when",
    "the model loads: add trt_engine_cache_enable / trt_engine_cache_path to keep them.",
]


class Enum(str):
    """An enum member in the text format (written bare, not quoted)."""


@dataclass(frozen=True)
class Batching:
    max_batch_size: int  # 0: the model takes no batch dimension first (Triton does not batch it)
    batcher: bool  # the config was tuned behind a dynamic batcher (the serving scenario)
    queue_delay_us: int
    preferred: int
    instances: int


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: list[int]  # the batch dimension included, first where it is batched (-1: any size)


def write_triton(spec: Spec, study: optuna.Study, pick: Pick, repository: Path) -> Path:
    """REPOSITORY/MODEL/config.pbtxt and REPOSITORY/MODEL/1/model.onnx; returns REPOSITORY/MODEL."""
    config = chosen_config(study, pick)
    dep = onnx_deployment(spec, config, "triton")
    inputs, outputs = tensors(spec, dep.model)
    batching = batching_of(spec, config, inputs, outputs)
    folder = Path(repository) / spec.name
    text = config_pbtxt(spec.name, dep, inputs, outputs, batching, _header(study, pick, config))
    atomic_write(folder / "1" / "model.onnx", lambda tmp: shutil.copyfile(dep.model, tmp), ".onnx")
    atomic_write_text(folder / "config.pbtxt", text)
    return folder


def tensors(spec: Spec, model: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs as the spec gives them; the outputs as the ONNX graph declares them."""
    import onnx  # noqa: PLC0415 (heavy: onnx)

    inputs = [
        Tensor(s.name, DATA_TYPES[s.dtype], [-1 if d == "batch" else int(d) for d in s.shape])
        for s in model_inputs(spec)
    ]
    graph = onnx.load(str(model), load_external_data=False).graph
    outputs = []
    for o in graph.output:
        t = o.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        outputs.append(Tensor(o.name, ONNX_TYPES.get(t.elem_type, "TYPE_INVALID"), dims))
    return inputs, outputs


def batching_of(spec: Spec, config: dict[str, Any], inputs: list[Tensor], outputs: list[Tensor]) -> Batching:
    """max_batch_size: the tuned one behind a batcher (scenario serving), else the batch size."""
    value = runner_for(backend_of(config)).knob

    def knob(name: str) -> Any:
        got = value(config, name)
        return SERVING_DEFAULTS[name] if got is None else got

    serving = getattr(spec, "scenario", "batch") == "serving"
    batch = int(value(config, "batch_size") or 1)
    largest = int(knob("max_batch_size")) if serving else batch
    batched_first = all(t.dims and t.dims[0] == -1 for t in inputs + outputs)
    return Batching(
        max_batch_size=largest if batched_first else 0,
        batcher=serving and batched_first,
        queue_delay_us=round(float(knob("batch_timeout_ms")) * 1000) if serving else 0,
        preferred=largest,
        instances=int(knob("instances")) if serving else 1,
    )


def config_pbtxt(
    name: str,
    dep: OnnxDeployment,
    inputs: list[Tensor],
    outputs: list[Tensor],
    batching: Batching,
    header: list[str],
) -> str:
    on_gpu = dep.providers[0]["name"] != CPU_PROVIDER
    cut = 1 if batching.max_batch_size else 0  # Triton's dims leave the batch dimension out
    fields: dict[str, Any] = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": batching.max_batch_size,
        "input": [{"name": t.name, "data_type": Enum(t.data_type), "dims": t.dims[cut:]} for t in inputs],
        "output": [{"name": t.name, "data_type": Enum(t.data_type), "dims": t.dims[cut:]} for t in outputs],
        "instance_group": [
            {"count": batching.instances, "kind": Enum("KIND_GPU" if on_gpu else "KIND_CPU")}
            | ({"gpus": [0]} if on_gpu else {})
        ],
    }
    if batching.batcher:
        fields["dynamic_batching"] = {
            "preferred_batch_size": [batching.preferred],
            "max_queue_delay_microseconds": batching.queue_delay_us,
        }
    session = dep.settings["session_options"]
    optimization: dict[str, Any] = {"graph": {"level": GRAPH_LEVELS[session["graph_optimization_level"]]}}
    accelerators = _gpu_accelerators(dep, inputs, batching)
    if accelerators:
        optimization["execution_accelerators"] = {"gpu_execution_accelerator": accelerators}
    fields["optimization"] = optimization
    intra = int(session.get("intra_op_num_threads") or 0)
    if intra and batching.instances > 1:  # the trial's threads, shared by its instances
        intra = max(1, intra // batching.instances)
    parameters = {
        "intra_op_thread_count": intra,
        "inter_op_thread_count": int(session.get("inter_op_num_threads") or 0),
        "execution_mode": EXECUTION_MODES[session["execution_mode"]],
    }
    fields["parameters"] = [{"key": k, "value": {"string_value": str(v)}} for k, v in parameters.items()]
    notes = [
        f"Providers: {fallback_note(dep.providers)}.",
        *(GPU_NOTES if on_gpu else []),
        "graph level: -1 basic, 1 extended, 2 none, 0 all (Triton's onnxruntime backend);"
        f" this config: {session['graph_optimization_level']}.",
    ]
    lines = [*(f"# {h}" for h in header), *(f"# {n}" for n in notes), *_render(fields)]
    return "\n".join(lines) + "\n"


def _gpu_accelerators(dep: OnnxDeployment, inputs: list[Tensor], batching: Batching) -> list[dict[str, Any]]:
    """TensorRT's and the CUDA provider's options as Triton's accelerators carry them."""
    out = []
    for p in dep.providers:
        options = {k: str(v) for k, v in (p.get("options") or {}).items()}
        if p["name"] == TENSORRT_PROVIDER:
            fp16 = options.pop("trt_fp16_enable", "0") == "1"
            int8 = options.pop("trt_int8_enable", "0") == "1"
            params = {"precision_mode": "INT8" if int8 else "FP16" if fp16 else "FP32"}
            params |= {k: v for k, v in options.items() if k not in TRT_LEFT_OUT}
            params |= _trt_profile(inputs, batching)
            out.append({"name": "tensorrt", "parameters": _map(params)})
        elif p["name"] == CUDA_PROVIDER:
            options.pop("device_id", None)  # Triton gives each instance its GPU
            out.append({"name": "cuda", "parameters": _map(options)})
    return out


def _trt_profile(inputs: list[Tensor], batching: Batching) -> dict[str, str]:
    """One TensorRT profile over the batches Triton may send: 1 to max_batch_size (the measured
    engine was built for the tuned batch alone: min = opt = max)."""
    if not batching.max_batch_size:
        return {}
    shapes = {t.name: t.dims[1:] for t in inputs}

    def at(batch: int) -> str:
        return profile_shapes({n: [batch, *dims] for n, dims in shapes.items()})

    return {
        "trt_profile_min_shapes": at(1),
        "trt_profile_opt_shapes": at(batching.preferred),
        "trt_profile_max_shapes": at(batching.max_batch_size),
    }


def _header(study: optuna.Study, pick: Pick, config: dict[str, Any]) -> list[str]:
    shown = ", ".join(f"{k}={v}" for k, v in config.items())
    return [
        f"Triton model configuration written by autotune {__version__}",
        f"from study {study.study_name}, trial #{pick.winner}: {shown}",
    ]


def _map(params: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in params.items()]


def _render(fields: dict[str, Any], depth: int = 0) -> list[str]:
    """Protobuf text format: messages as `key { ... }`, repeated messages as `key [ {...}, ... ]`."""
    pad = "  " * depth
    out: list[str] = []
    for key, value in fields.items():
        if isinstance(value, dict):
            out += [f"{pad}{key} {{", *_render(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                out += [f"{pad}  {{", *_render(item, depth + 2), f"{pad}  }}{comma}"]
            out.append(f"{pad}]")
        elif isinstance(value, list):
            out.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            out.append(f"{pad}{key}: {_scalar(value)}")
    return out


def _scalar(v: Any) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)
