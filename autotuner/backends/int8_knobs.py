"""The static-int8 knobs (calibration, per_channel, int8_exclude) as the torch and onnxruntime
runners declare them: they apply to precision int8 only, and are refused when given elsewhere."""

from __future__ import annotations

from autotuner.models.quantization import QUANT_KNOBS
from autotuner.runners.knobs import Knob

INT8_ONLY = {"precision": ("int8",)}
WHERE = "to precision int8 (static, calibrated)"


def int8_knobs(calibrations: tuple[str, ...]) -> dict[str, Knob]:
    """The three knobs, with this runner's calibrators (int8_exclude's names and regular
    expressions are the runner's own check: `models.quantization.exclude_reason`)."""
    only = {"applies_to": INT8_ONLY, "where": WHERE, "strict": True}
    return {
        "calibration": Knob(
            QUANT_KNOBS["calibration"],
            choices=calibrations,
            unknown="{name} {value} is not one of {runner}'s calibrators ({choices})",
            **only,
        ),
        "per_channel": Knob(QUANT_KNOBS["per_channel"], kind=bool, **only),
        "int8_exclude": Knob(QUANT_KNOBS["int8_exclude"], **only),
    }
