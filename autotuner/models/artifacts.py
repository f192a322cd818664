"""Artifacts shared by trials, made once in a child process and cached by content hash: the
key (models.identity.artifact_key) is what the model computes (its weights, not its source
file), the data's content and the library versions that make the artifact.

- the ONNX export of a torch model (and its fp16, int8-dynamic and static int8 variants, one per
  calibration setting and calibration data);
- the fp32 reference outputs on the accuracy inputs: the data's evaluation set when the spec has
  `data`, else seeded random samples.

They are made in a child process so that a trial's peak memory is not inflated by a model it
does not run, and so that a crash there is reported like any other trial error.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.errors import AutotuneError
from autotuner.files import atomic_write, cache_dir
from autotuner.models.builtins import build_torch_model, model_inputs
from autotuner.models.dataset import calibration_batches, data_sets, model_batch
from autotuner.models.identity import artifact_key
from autotuner.models.inputs import chunks, make_inputs
from autotuner.models.quantization import quantize_onnx, variant_name
from autotuner.spec.loading import parse_spec, public_spec_dict
from autotuner.spec.schema import Spec
from autotuner.subprocesses import ChildFailed, run_module

OPSET = 17


def onnx_path(spec: Spec, precision: str, quant: dict[str, Any] | None = None) -> Path:
    """The ONNX file for a precision, made on first use; int8 and int8-dynamic take the
    quantizer's settings (models.quantization.ort_quantization: 7-bit weights where
    `reduce_range`), static int8 is calibrated on the data's calibration set."""

    if spec.model.onnx is not None and precision == "fp32":
        return spec.resolve(spec.model.onnx)
    variant = precision
    if precision == "int8":
        if quant is None or spec.data is None:
            raise AutotuneError("static int8 needs its calibration settings and the spec's data")
        variant = variant_name(quant, data_sets(spec).sha256)
    elif precision == "int8-dynamic" and quant and quant.get("reduce_range"):
        variant = "int8-dynamic-rr"
    path = cache_dir() / "onnx" / f"{artifact_key(spec)}.{variant}.onnx"
    if not path.exists():
        _in_child("onnx", spec, {"precision": precision, "path": str(path), "quant": quant})
    return path


def quantization_record(path: Path) -> dict[str, Any]:
    """What the quantizer did for a static int8 model (excluded nodes, op types); {} if unknown."""
    side = path.with_name(path.name + ".json")
    try:
        return dict(json.loads(side.read_text()))
    except (OSError, ValueError):
        return {}


def reference_outputs(spec: Spec) -> np.ndarray:
    if spec.data is not None:
        sets = data_sets(spec)
        name = f"{artifact_key(spec)}.data{sets.sha256[:16]}.seed{spec.data_seed}.n{spec.data.evaluation}.npy"
    else:
        name = f"{artifact_key(spec)}.seed{spec.data_seed}.n{spec.accuracy.samples}.npy"
    path = cache_dir() / "reference" / name
    if not path.exists():
        _in_child("reference", spec, {"path": str(path)})
    return np.load(path)


def accuracy_inputs(spec: Spec) -> dict[str, np.ndarray]:
    """The samples every config's accuracy is checked on: the data's evaluation set, else seeded
    random samples (a seed apart from the timed batch); the same for every config."""

    if spec.data is not None:
        return model_batch(data_sets(spec).evaluation, model_inputs(spec))
    return make_inputs(model_inputs(spec), spec.accuracy.samples, spec.data_seed + 1)


def _in_child(kind: str, spec: Spec, extra: dict[str, Any]) -> None:
    try:
        run_module("autotuner.models.artifacts", {"kind": kind, "spec": public_spec_dict(spec), **extra})
    except ChildFailed as e:
        raise AutotuneError(f"preparing the {kind} failed (exit {e.code}): {e.last_line}") from None


def _export(spec: Spec, precision: str, path: Path, quant: dict[str, Any] | None = None) -> None:
    if precision == "fp32":
        _export_fp32(spec, path)
        return
    source = onnx_path(spec, "fp32")
    if precision == "fp16":
        import onnx  # noqa: PLC0415 (heavy: onnx)
        from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415 (heavy: onnxruntime)

        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        atomic_write(path, lambda tmp: onnx.save(model, tmp), ".onnx")
    elif precision == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415 (heavy: onnxruntime)

        seven = bool(quant and quant.get("reduce_range"))

        def write(tmp: str) -> None:
            quantize_dynamic(str(source), tmp, weight_type=QuantType.QInt8, reduce_range=seven)

        atomic_write(path, write, ".onnx")
    elif precision == "int8":
        assert quant is not None
        record = write_static_int8(spec, source, path, quant)
        atomic_write(
            path.with_name(path.name + ".json"), lambda tmp: Path(tmp).write_text(json.dumps(record))
        )
    else:
        raise AutotuneError(f"no ONNX variant for precision {precision!r}")


def write_static_int8(spec: Spec, source: Path, path: Path, quant: dict[str, Any]) -> dict[str, Any]:
    """Calibrate on the data's calibration set and write the QDQ model to `path` (atomically)."""

    sets = data_sets(spec)
    calibration = calibration_batches(spec)
    record: dict[str, Any] = {}

    def write(tmp: str) -> None:
        record.update(quantize_onnx(source, tmp, calibration, quant))

    atomic_write(path, write, ".onnx")
    return {**record, "settings": quant, "data_sha256": sets.sha256}


def _export_fp32(spec: Spec, path: Path) -> None:
    import torch  # noqa: PLC0415 (heavy: torch)

    model = build_torch_model(spec)
    specs = model_inputs(spec)
    sample = {k: torch.from_numpy(v) for k, v in make_inputs(specs, 2, spec.data_seed).items()}
    names = [s.name for s in specs]
    axes = {s.name: {s.shape.index("batch"): "batch"} for s in specs}
    axes["output"] = {0: "batch"}

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                tuple(sample[n] for n in names),  # positional, in the spec's input order
                tmp,
                input_names=names,
                output_names=["output"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )

    atomic_write(path, write, ".onnx")


def _reference(spec: Spec, path: Path) -> None:
    inputs = accuracy_inputs(spec)
    if spec.model.onnx is not None:
        import onnxruntime as ort  # noqa: PLC0415 (heavy: onnxruntime)

        sess = ort.InferenceSession(str(onnx_path(spec, "fp32")), providers=["CPUExecutionProvider"])
        # A model exported with a fixed batch takes the samples in batches of exactly that size.
        dims = sess.get_inputs()[0].shape
        specs = model_inputs(spec)
        axis = specs[0].shape.index("batch")
        fixed = dims[axis] if axis < len(dims) and isinstance(dims[axis], int) and dims[axis] > 0 else None
        if fixed is None:
            out = np.asarray(sess.run(None, inputs)[0], dtype=np.float32)
        else:
            outs = [
                np.asarray(sess.run(None, b)[0], dtype=np.float32)[:n]
                for b, n in chunks(inputs, specs, fixed)
            ]
            out = np.concatenate(outs)
    else:
        import torch  # noqa: PLC0415 (heavy: torch)

        model = build_torch_model(spec)
        with torch.inference_mode():
            res = model(*[torch.from_numpy(inputs[s.name]) for s in model_inputs(spec)])
        out = first_tensor(res).float().numpy()
    atomic_write(path, lambda tmp: np.save(tmp, out), ".npy")
    # np.save appends .npy to names without it; mkstemp gave one with it.


def first_tensor(res: Any) -> Any:
    """The first tensor of a model's output (a tensor, a tuple or list, or a dict)."""
    if isinstance(res, dict):
        res = next(iter(res.values()))
    while isinstance(res, list | tuple):
        res = res[0]
    if hasattr(res, "last_hidden_state"):
        res = res.last_hidden_state
    return res


def _main() -> None:
    req = json.loads(sys.stdin.read())
    spec = parse_spec(req["spec"])
    if req["kind"] == "onnx":
        _export(spec, req["precision"], Path(req["path"]), req.get("quant"))
    else:
        _reference(spec, Path(req["path"]))


if __name__ == "__main__":
    from autotuner.watchdog import arm_from_env

    arm_from_env()  # end with the process that asked, whoever kills it
    _main()
