"""The int8 knobs as the torch and onnxruntime runners declare them: calibration, per_channel and
int8_exclude apply to precision int8 only, and are refused when given elsewhere; reduce_range to
the int8 precisions whose kernels can saturate (models.int8_cpu)."""

from __future__ import annotations

from autotuner.models.quantization import QUANT_KNOBS
from autotuner.runners.knobs import Knob

INT8_ONLY = {"precision": ("int8",)}
WHERE = "to precision int8 (static, calibrated)"


def int8_knobs(calibrations: tuple[str, ...], reduced: tuple[str, ...] = ("int8",)) -> dict[str, Knob]:
    """The three knobs, with this runner's calibrators (int8_exclude's names and regular
    expressions are the runner's own check: `models.quantization.exclude_reason`), and
    `reduce_range` for the precisions `reduced` whose int8 kernels this runner quantizes for
    (7-bit weights in ONNX Runtime, 7-bit activations in torch: models.int8_cpu)."""
    only = {"applies_to": INT8_ONLY, "where": WHERE, "strict": True}
    return {
        "reduce_range": Knob(
            "auto",
            choices=("auto", True, False),
            applies_to={"precision": reduced},
            where=f"to precision {' and '.join(reduced)}",
            unknown="{name} {value!r} is not one of auto, true, false",
        ),
        "calibration": Knob(
            QUANT_KNOBS["calibration"],
            choices=calibrations,
            unknown="{name} {value} is not one of {runner}'s calibrators ({choices})",
            **only,
        ),
        "per_channel": Knob(QUANT_KNOBS["per_channel"], kind=bool, **only),
        "int8_exclude": Knob(QUANT_KNOBS["int8_exclude"], **only),
    }
