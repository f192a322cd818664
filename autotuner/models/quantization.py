"""Static INT8: weights and activations quantized with scales calibrated on the data's calibration set.

`int8` is static (calibrated) quantization; `int8-dynamic` quantizes activations at run time and
needs no data. The knobs (they apply to precision int8 only; declared in backends.int8_knobs):

- calibration: how activation ranges are set from the calibration set. ONNX Runtime: minmax,
  entropy, percentile (its calibrators); torch: minmax (MinMaxObserver), histogram
  (HistogramObserver, which minimizes the quantization error over a histogram).
- per_channel: one weight scale per output channel (true) or per tensor (false).
- int8_exclude: layers kept in floating point: none, first-last (the first and last weight
  layer), activation-matmuls (ONNX: MatMuls of two activations, attention's), or `re:REGEX`
  (layers whose name matches; ONNX node names, torch module names).

ONNX Runtime writes QDQ models (QuantizeLinear/DequantizeLinear pairs), which its CPU kernels fuse
and TensorRT and the CUDA provider can also run. Only the weight-bearing ops (MatMul, Gemm, Conv,
Gather) are quantized: quantizing every op of MiniLM (its Add, Softmax, LayerNorm inputs and the
attention mask) gave a worst-sample cosine of 0.16 on real sentences.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.models.int8_cpu import reduce_range

QUANT_KNOBS: dict[str, Any] = {"calibration": "minmax", "per_channel": True, "int8_exclude": "none"}
ORT_CALIBRATIONS = ("minmax", "entropy", "percentile")
TORCH_CALIBRATIONS = ("minmax", "histogram")
CALIBRATIONS = (*ORT_CALIBRATIONS, "histogram")
EXCLUDES = ("none", "first-last", "activation-matmuls")
ORT_OPS = ["MatMul", "Gemm", "Conv", "Gather"]
CALIBRATION_BATCH = 8
ENTROPY_BINS = 2048


def exclude_reason(
    value: Callable[[dict[str, Any], str], Any],
    config: dict[str, Any],
    excludes: tuple[str, ...] = EXCLUDES,
    runner: str = "",
) -> str | None:
    """Why a static-int8 config's int8_exclude cannot run, or None (the other quantization knobs
    are checked from their declarations: backends.int8_knobs)."""
    if value(config, "precision") != "int8":
        return None
    exclude = value(config, "int8_exclude")
    if not isinstance(exclude, str):
        return f"int8_exclude must be a name or 're:REGEX', not {exclude!r}"
    if exclude.startswith("re:"):
        try:
            re.compile(exclude[3:])
        except re.error as e:
            return f"int8_exclude {exclude!r} is not a regular expression ({e})"
    elif exclude not in excludes:
        return f"int8_exclude {exclude!r} is not one of {', '.join(excludes)} or 're:REGEX' ({runner})"
    return None


# Where the QDQ model runs on a GPU: TensorRT (explicit quantization) wants symmetric activations.
SYMMETRIC_BACKENDS = ("onnxruntime-cuda", "onnxruntime-tensorrt")


def quant_settings(value: Callable[[dict[str, Any], str], Any], config: dict[str, Any]) -> dict[str, Any]:
    """The static-quantization settings of a config (symmetric activations for TensorRT / CUDA)."""
    backend = value(config, "backend")
    symmetric = backend in SYMMETRIC_BACKENDS
    return {
        "calibration": value(config, "calibration"),
        "per_channel": bool(value(config, "per_channel")),
        "exclude": value(config, "int8_exclude"),
        "activations": "int8-symmetric" if symmetric else "uint8",
        "reduce_range": seven_bits(value, config),
    }


def seven_bits(value: Callable[[dict[str, Any], str], Any], config: dict[str, Any]) -> bool:
    """The config's `reduce_range` resolved for its backend on this CPU (models.int8_cpu)."""
    return reduce_range(value(config, "reduce_range"), value(config, "backend"))


def variant_name(settings: dict[str, Any], data_sha256: str) -> str:
    """The cache name of a quantized model: its settings and the calibration data."""

    exclude = settings["exclude"]
    if exclude.startswith("re:"):
        exclude = "re" + hashlib.sha256(exclude.encode()).hexdigest()[:8]
    pc = "pc" if settings["per_channel"] else "pt"
    act = "s8" if settings["activations"] == "int8-symmetric" else "u8"
    rr = "-rr" if settings.get("reduce_range") else ""
    return f"int8-{settings['calibration']}-{pc}-{act}-{exclude}{rr}-{data_sha256[:12]}"


def ort_quantization(
    value: Callable[[dict[str, Any], str], Any], config: dict[str, Any]
) -> dict[str, Any] | None:
    """The quantizer's settings of an onnxruntime config's model file: static int8's
    (`quant_settings`) or int8-dynamic's, each with `reduce_range` resolved on this CPU
    (models.int8_cpu); None for a float precision. The runner, `autotune quantize` and the
    export all name the model file from this."""
    precision = value(config, "precision")
    if precision not in ("int8", "int8-dynamic"):
        return None
    if precision == "int8":
        return quant_settings(value, config)
    return {"reduce_range": seven_bits(value, config)}


def batches(arrays: dict[str, np.ndarray], size: int = CALIBRATION_BATCH) -> Iterator[dict[str, np.ndarray]]:
    """A set (samples on axis 0) in batches of `size`, on axis 0."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in arrays.items()}


def excluded_onnx_nodes(model: Any, exclude: str) -> list[str]:
    """The node names `int8_exclude` keeps in floating point, or ValueError when none match."""
    if exclude == "none":
        return []
    inits = {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ORT_OPS]
    if exclude == "first-last":
        weighted = [n for n in nodes if n.op_type != "Gather" and any(i in inits for i in n.input)]
        return sorted({weighted[0].name, weighted[-1].name}) if weighted else []
    if exclude == "activation-matmuls":
        return [n.name for n in nodes if n.op_type == "MatMul" and not any(i in inits for i in n.input)]
    pattern = re.compile(exclude[3:])
    found = [n.name for n in nodes if pattern.search(n.name)]
    if not found:
        raise ValueError(f"int8_exclude {exclude!r} matches no MatMul/Gemm/Conv/Gather node of the model")
    return found


@functools.cache
def entropy_refusal() -> str | None:
    """Why this onnxruntime cannot calibrate by entropy as autotune does, or None."""

    from onnxruntime.quantization import quantize_static  # noqa: PLC0415 (heavy: onnxruntime)

    if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        return None
    return (
        "entropy calibration needs quantize_static's calibration_cache_path, which this onnxruntime "
        "lacks (its own entropy calibrator, 128 bins for 128 levels, gives minmax's ranges)"
    )


def quantize_onnx(
    source: Path, out: str, calibration: list[dict[str, np.ndarray]], settings: dict[str, Any]
) -> dict[str, Any]:
    """Write the static INT8 QDQ model of `source` to `out`; what was done (for the evidence).

    `calibration`: the calibration set in batches, as the model takes them.
    """

    import onnx  # noqa: PLC0415 (heavy: onnx)
    from onnxruntime.quantization import (  # noqa: PLC0415 (heavy: onnxruntime)
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )  # noqa: PLC0415 (heavy: onnxruntime)
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data  # noqa: PLC0415 (heavy: onnxruntime)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    sets = list(calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(sets)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    symmetric = settings["activations"] == "int8-symmetric"
    seven = bool(settings.get("reduce_range"))  # 7-bit weights (models.int8_cpu)
    excluded = excluded_onnx_nodes(onnx.load(str(source), load_external_data=False), settings["exclude"])
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" on every call
    method = methods[settings["calibration"]]
    with tempfile.TemporaryDirectory(prefix="autotune-calibration-") as tmp:
        reader: Reader | None = Reader()
        cache = None
        if method == CalibrationMethod.Entropy:
            reason = entropy_refusal()
            if reason:
                raise RuntimeError(reason)
            # quantize_static builds its entropy calibrator with 128 histogram bins for 128
            # quantized bins, which leaves one candidate threshold: the full range, minmax's
            # result. Calibrated here with 2048 bins (TensorRT's entropy calibration), its
            # ranges handed over as a calibration cache.
            cache = Path(tmp) / "ranges.json"
            calibrator = create_calibrator(
                source,
                ORT_OPS,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=method,
                extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128, "symmetric": symmetric},
            )
            calibrator.collect_data(reader)
            save_tensors_data(calibrator.compute_data(), cache)
            reader = None
        quantize_static(
            str(source),
            out,
            reader,
            calibration_cache_path=cache,
            quant_format=QuantFormat.QDQ,
            per_channel=settings["per_channel"],
            calibrate_method=method,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=ORT_OPS,
            nodes_to_exclude=excluded,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            reduce_range=seven,
        )
    return {"excluded_nodes": excluded, "op_types": ORT_OPS, "reduce_range": seven}


def quantize_torch(
    model: Any, calibration: Iterator[tuple[Any, ...]], settings: dict[str, Any]
) -> dict[str, Any]:
    """Static INT8 of the model's Linear layers in eager mode, in place: each runs int8 weights on
    an int8 input whose scale the calibration set fixed (QuantWrapper: quantize, int8 linear,
    dequantize). `calibration` yields positional input tuples."""

    import torch  # noqa: PLC0415 (heavy: torch)
    import torch.ao.quantization as tq  # noqa: PLC0415 (heavy: torch)

    act = tq.MinMaxObserver if settings["calibration"] == "minmax" else tq.HistogramObserver
    weight = (
        tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        if settings["per_channel"]
        else tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    )
    # reduce_range: 7-bit activations, where the CPU's u8 x s8 kernels saturate (models.int8_cpu).
    rr = bool(settings.get("reduce_range"))
    qconfig = tq.QConfig(activation=act.with_args(dtype=torch.quint8, reduce_range=rr), weight=weight)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    exclude = settings["exclude"]
    if exclude == "first-last":
        skipped = sorted({names[0], names[-1]}) if names else []
    elif exclude.startswith("re:"):
        pattern = re.compile(exclude[3:])
        skipped = [n for n in names if pattern.search(n)]
        if not skipped:
            raise ValueError(f"int8_exclude {exclude!r} matches no Linear layer of the model")
    else:
        skipped = []
    for name in names:
        if name in skipped:
            continue
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        wrapped = tq.QuantWrapper(getattr(owner, leaf))
        wrapped.qconfig = qconfig
        setattr(owner, leaf, wrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare(model, inplace=True)
        with torch.inference_mode():
            for args in calibration:
                model(*args)
        tq.convert(model, inplace=True)
    return {"excluded_layers": skipped, "quantized_layers": len(names) - len(skipped)}
