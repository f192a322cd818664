"""Task scores: `accuracy.metric`, a function (outputs, evaluation set) -> float, and the built-in ones.

The function gets the model's outputs on the evaluation set (a float32 array, samples on axis 0)
and the evaluation set itself (a dict of arrays, samples on axis 0: the inputs and every label the
data holds). Larger is better. It is applied to the config's outputs and to fp32's, so that a
constraint can bound the score relative to fp32's ("accuracy_task >= 0.98 * fp32").
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from autotuner.models.builtins import _on_path
from autotuner.spec.schema import Spec


class TaskMetricError(RuntimeError):
    """The task metric raised, or returned something that is not a finite number. Internal, not
    an AutotuneError: the worker records it as the trial's failure (measure.worker)."""


def _similarities(outputs: np.ndarray, evaluation: Mapping[str, np.ndarray], name: str) -> tuple[Any, Any]:
    """The `pair` labels and the cosine similarity of every two embeddings (itself: -inf)."""
    if "pair" not in evaluation:
        raise ValueError(f"{name} needs a 'pair' label in the data (the builtin sentences have it)")
    pairs = np.asarray(evaluation["pair"])
    emb = np.asarray(outputs, dtype=np.float64).reshape(len(pairs), -1)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    return pairs, sims


def paraphrase_margin(outputs: np.ndarray, evaluation: Mapping[str, np.ndarray]) -> float:
    """Mean over sentences of (cosine to its paraphrase - the highest cosine to any other sentence):
    how far each paraphrase stands out. Graded where retrieval saturates (MRR 1.0): precision
    that bends the embeddings narrows the margin before it swaps a neighbour."""
    pairs, sims = _similarities(outputs, evaluation, "paraphrase_margin")
    margins = []
    for i in range(len(pairs)):
        mate = (pairs == pairs[i]) & (np.arange(len(pairs)) != i)
        if mate.any():
            margins.append(sims[i, mate].max() - sims[i, ~mate].max())
    if not margins:
        raise ValueError("no sentence of the evaluation set has its paraphrase there")
    return float(np.mean(margins))


def paraphrase_mrr(outputs: np.ndarray, evaluation: Mapping[str, np.ndarray]) -> float:
    """Mean reciprocal rank of each sentence's paraphrase among all the others, by cosine of the
    embeddings (label `pair`: sentences with the same value are paraphrases). 1.0: every
    sentence's nearest neighbour is its paraphrase."""
    pairs, sims = _similarities(outputs, evaluation, "paraphrase_mrr")
    ranks = []
    for i in range(len(pairs)):
        mates = np.flatnonzero((pairs == pairs[i]) & (np.arange(len(pairs)) != i))
        if not len(mates):
            continue
        best = sims[i, mates].max()
        ranks.append(1.0 / (1 + int((sims[i] > best).sum())))
    if not ranks:
        raise ValueError("no sentence of the evaluation set has its paraphrase there")
    return float(np.mean(ranks))


def load_metric(spec: Spec) -> Callable[..., Any]:
    """The accuracy.metric function (imported from the spec's folder, the current one or sys.path)."""

    target = spec.accuracy.metric
    assert target is not None
    mod_name, _, fn_name = target.partition(":")
    with _on_path(spec.base_dir):
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise TaskMetricError(f"accuracy.metric {target}: cannot load it ({e})") from None
    if not callable(fn):
        raise TaskMetricError(f"accuracy.metric {target} is not a function")
    return fn


def score(
    fn: Callable[..., Any], target: str, outputs: np.ndarray, evaluation: Mapping[str, np.ndarray]
) -> float:
    """The task score, or TaskMetricError with the function's own message."""
    try:
        value = fn(outputs, dict(evaluation))
    except Exception as e:  # noqa: BLE001 - the user's code: its error becomes the FAIL's reason
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise TaskMetricError(f"accuracy.metric {target} raised {type(e).__name__}: {first}") from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TaskMetricError(
            f"accuracy.metric {target} returned {type(value).__name__}, not a number"
        ) from None
    if not math.isfinite(number):
        raise TaskMetricError(f"accuracy.metric {target} returned {number} (not a finite number)")
    return number
