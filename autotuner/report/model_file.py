"""`autotune quantize`: the ONNX model file an onnxruntime config runs, written where asked."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from autotuner.errors import UsageError
from autotuner.execution.capabilities import probe
from autotuner.files import atomic_write, file_sha256
from autotuner.models.artifacts import onnx_path, quantization_record
from autotuner.models.dataset import data_sets
from autotuner.models.quantization import ort_quantization
from autotuner.runners.base import backend_of
from autotuner.runners.registry import runner_for
from autotuner.spec.schema import Spec


def write_model(spec: Spec, config: dict[str, Any], output: str | Path) -> dict[str, Any]:
    """Write the ONNX model of a full config (static int8: calibrated on the spec's data, as its
    trials were) to `output`; returns what was done (sha256, precision, params, quantization and
    data). UsageError where the config is not an onnxruntime one or does not run here."""
    backend = backend_of(config)
    if not backend.startswith("onnxruntime-"):
        raise UsageError(
            f"quantize writes ONNX models; {backend} quantizes in the serving process "
            "(the best-config YAML's deploy section gives the code)"
        )
    cls = runner_for(backend)
    reason = cls.check(spec, config, probe())
    if reason:
        raise UsageError(f"quantize: this config does not run here: {reason}")
    precision = str(cls.knob(config, "precision"))
    quant = ort_quantization(cls.knob, config)
    source = onnx_path(spec, precision, quant)
    out = Path(output)
    atomic_write(out, lambda tmp: shutil.copyfile(source, tmp), ".onnx")
    record: dict[str, Any] = {"sha256": file_sha256(out), "precision": precision, "params": config}
    record.update(quantization_record(source))
    if spec.data is not None:
        record["data"] = data_sets(spec).summary(spec)
    return record
