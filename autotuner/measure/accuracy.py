"""Outputs of a config against the fp32 reference on the same inputs (the data's evaluation set,
or seeded random samples), and the task score of accuracy.metric."""

from __future__ import annotations

import numpy as np

from autotuner.models.dataset import data_sets
from autotuner.models.tasks import TaskMetricError, load_metric, score
from autotuner.spec.schema import Spec


def compare(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """accuracy_cosine (worst sample), accuracy_max_abs_error, accuracy_top1 (argmax agreement)."""
    if out.shape != ref.shape:
        raise ValueError(f"output shape {out.shape} differs from the reference {ref.shape}")
    n = ref.shape[0]
    a = out.astype(np.float64).reshape(n, -1)
    b = ref.astype(np.float64).reshape(n, -1)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(axis=1) / (na * nb))
    last = ref.shape[-1] if ref.ndim > 1 else 1
    top_a = out.astype(np.float64).reshape(-1, last).argmax(axis=1)
    top_b = ref.astype(np.float64).reshape(-1, last).argmax(axis=1)
    finite = bool(np.isfinite(a).all())
    return {
        "accuracy_cosine": float(cos.min()) if finite else float("nan"),
        "accuracy_max_abs_error": float(np.abs(a - b).max()) if finite else float("nan"),
        "accuracy_top1": float((top_a == top_b).mean()) if finite else float("nan"),
    }


# fp32 on any backend reproduces the fp32 reference this closely (worst-sample cosine); ONNX
# Runtime's fp32 against torch's is above 0.99999 on the shipped models. Below it, the trial ran
# another model than the reference was computed from.
REFERENCE_COSINE = 0.999


class ReferenceMismatch(Exception):
    """fp32 outputs that are not the fp32 reference's: the trial ran another model."""

    def __init__(self, message: str, metrics: dict[str, float]) -> None:
        super().__init__(message)
        self.metrics = metrics


def check_reference(backend: str, precision: object, metrics: dict[str, float]) -> None:
    """ReferenceMismatch when an fp32 config's outputs disagree with the fp32 reference: not an
    accuracy miss of a precision, but an export, a reference or a build of other weights (a
    stale cache, a factory that draws other weights each time)."""
    cos = metrics.get("accuracy_cosine")
    if precision != "fp32" or cos is None or not np.isfinite(cos) or cos >= REFERENCE_COSINE:
        return
    raise ReferenceMismatch(
        f"fp32 on {backend} disagrees with the fp32 reference (worst-sample cosine {cos:.4f} < "
        f"{REFERENCE_COSINE}): the model it ran is not the model the reference was computed from "
        "(an export or reference made from other weights, or a factory that builds other weights in "
        f"each process); {backend} is not measured again in this study until the model changes",
        metrics,
    )


def task_scores(spec: Spec, outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """accuracy_task (accuracy.metric on the evaluation set) and its ratio to fp32's; {} without
    a metric. TaskMetricError when the metric raises or gives no finite number, for either."""
    if spec.accuracy.metric is None:
        return {}

    evaluation = data_sets(spec).evaluation
    fn = load_metric(spec)
    task = score(fn, spec.accuracy.metric, outputs, evaluation)
    fp32 = score(fn, spec.accuracy.metric, reference, evaluation)
    relative = any(c.metric == "accuracy_task_vs_fp32" for c in spec.constraints) or any(
        o.metric == "accuracy_task_vs_fp32" for o in spec.objectives
    )
    if fp32 <= 0 and not relative:
        return {"accuracy_task": task}
    if fp32 <= 0:
        raise TaskMetricError(
            f"accuracy.metric {spec.accuracy.metric} scores fp32 {fp32:g}; a bound relative to fp32 "
            "needs a positive fp32 score"
        )
    return {"accuracy_task": task, "accuracy_task_vs_fp32": task / fp32}


def data_info(spec: Spec) -> dict[str, object]:
    """The data a trial's accuracy was measured on, for its info (the evidence travels with it)."""
    if spec.data is None:
        return {}

    return {"data": data_sets(spec).summary(spec)}
