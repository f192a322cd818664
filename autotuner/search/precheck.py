"""Failures known without launching: what the runner knows (runners.refusals), then what the
study's history shows (the same config, or the same one at a smaller batch, already failed in a
way that does not change on a rerun; an engine refused one of its knob values outright; the
backend's fp32 disagreed with the reference on this model)."""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial

from autotuner.result import TrialResult
from autotuner.runners.knobs import backend_of
from autotuner.runners.refusals import refusal
from autotuner.runners.registry import runner_for
from autotuner.spec.schema import Spec
from autotuner.study import records as rec

DETERMINISTIC = ("unsupported", "oom", "predicted-oom")


def precheck(
    spec: Spec, config: dict[str, Any], caps: dict[str, Any], trials: list[FrozenTrial]
) -> TrialResult | None:
    """A failure known without launching: the runner refuses it, or the same config (or the
    same one at a smaller batch) already failed in a way that does not change on a rerun, or
    the engine refused one of its knob values outright in an earlier trial (vLLM's block_size 16
    on CPU: every config with that value fails the same way)."""
    known = refusal(spec, config, caps)
    if known is not None:
        return known
    mismatch = reference_mismatch(spec, backend_of(config), trials)
    if mismatch is not None:
        return mismatch
    return failed_before(config, trials)


def failed_before(config: dict[str, Any], trials: list[FrozenTrial]) -> TrialResult | None:
    """The failure an earlier trial's deterministic failure predicts for this config, or None."""
    cls = runner_for(backend_of(config))
    rest = {k: v for k, v in config.items() if k != "batch_size"}
    for t in trials:
        cls_ = rec.failure_class(t)
        if not t.state.is_finished() or cls_ not in DETERMINISTIC:
            continue
        other = rec.trial_config(t)
        if other == config:
            # Stored as that failure again, and free: no budget for a measurement never taken.
            return TrialResult.failure(
                cls_,
                f"same config as trial #{t.number}: {rec.failure_message(t)}",
                **{rec.FAILED_BEFORE: t.number},
            )
        refused = rec.refused_values(t) if cls_ == "unsupported" else {}
        if refused and backend_of(other) == backend_of(config):
            if all(cls.knob(config, k) == v for k, v in refused.items()):
                shown = ", ".join(f"{k}={v!r}" for k, v in refused.items())
                return TrialResult.failure(
                    "unsupported",
                    f"{shown} was refused by the engine in trial #{t.number}: {rec.failure_message(t)}",
                    refused=refused,
                )
        if cls_ == "oom" and {k: v for k, v in other.items() if k != "batch_size"} == rest:
            if int(config.get("batch_size", 1)) >= int(other.get("batch_size", 1)):
                return TrialResult.failure(
                    "predicted-oom",
                    f"trial #{t.number} ran out of memory at batch_size={other.get('batch_size')} "
                    "with the same other settings",
                )
    return None


def reference_mismatch(spec: Spec, backend: str, trials: list[FrozenTrial]) -> TrialResult | None:
    """The backend's fp32 disagreed with the fp32 reference on this model: every config of it is
    refused, free, until the model changes (another model digest)."""
    for t in trials:
        if rec.failure_class(t) != "reference-mismatch" or rec.failed_before(t) is not None:
            continue
        if backend_of(rec.trial_config(t)) != backend:
            continue
        if rec.info(t).get("model_sha256") != spec.model_digest:
            continue  # measured on another model: that one may have been the broken export
        return TrialResult.failure(
            "reference-mismatch",
            f"not run: fp32 on {backend} disagreed with the fp32 reference in trial #{t.number}, so "
            f"{backend} runs another model than the reference; fix the model or its export and rerun",
            **{rec.FAILED_BEFORE: t.number},
        )
    return None
