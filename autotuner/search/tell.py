"""The tell side of the driver: how a trial's outcome is stored and the trial ended (measured,
refused before launch, answered from a pooled estimate, failed before, or surplus), each in one
transaction through study.records."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from autotuner.result import TrialResult
from autotuner.search.estimates import NOT_LAUNCHED
from autotuner.spec.schema import Spec
from autotuner.study import records as rec


def record(spec: Spec, study: optuna.Study, trial: Trial, result: TrialResult) -> tuple[str, str | None]:
    """Store every metric and end the trial, in one transaction. Returns (summary, failure class)."""
    attrs = rec.result_attrs(result)
    failure = result.failure_class
    message = result.failure_message
    if result.ok:
        wanted = [o.metric for o in spec.objectives] + [c.metric for c in spec.constraints]
        bad = [m for m in wanted if not math.isfinite(result.metrics.get(m, math.nan))]
        if bad:
            failure = "invalid-metric"
            message = f"{bad[0]} is {'missing' if bad[0] not in result.metrics else 'not finite'}"
    if failure:
        attrs.update({rec.FAILURE_CLASS: failure, rec.FAILURE_MESSAGE: message})
        if (before := result.info.get(rec.FAILED_BEFORE)) is not None:
            attrs[rec.FAILED_BEFORE] = before  # the budget does not count it (uses_budget)
        if failure in NOT_LAUNCHED:
            # Known without running: PRUNED and infeasible, so that samplers which read only
            # COMPLETE and PRUNED trials (TPE, NSGA-II) rank it last and steer away from it.
            rec.finish(study, trial, TrialState.PRUNED, attrs=attrs, constraints={rec.RUNNABLE: 1.0})
            return f"PRUNED {failure}: {message}", failure
        rec.finish(study, trial, TrialState.FAIL, attrs=attrs)
        return f"FAIL {failure}: {message}", failure
    violations = {c.text: c.violation(result.metrics[c.metric]) for c in spec.constraints}
    values = [result.metrics[o.metric] for o in spec.objectives]
    rec.finish(study, trial, TrialState.COMPLETE, attrs=attrs, constraints=violations, values=values)
    ok = all(v <= 0 for v in violations.values())
    shown = ", ".join(f"{o.metric}={result.metrics[o.metric]:.4g}" for o in spec.objectives)
    return f"{shown}{'' if ok else ' (infeasible)'}", None


def tell_pooled(spec: Spec, study: optuna.Study, trial: Trial, e: Any, values: list[float]) -> str:
    """A repeat the sampler proposed, answered with the config's pooled estimate: no measurement."""
    violations = {}
    for c in spec.constraints:
        v = e.mean(c.metric)
        violations[c.text] = c.violation(v) if v is not None else 1.0
    rec.finish(
        study,
        trial,
        TrialState.COMPLETE,
        attrs={rec.POOLED_FROM: list(e.trials)},
        constraints=violations,
        values=values,
    )
    shown = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(spec.objectives, values, strict=True))
    return f"repeat of #{e.first_trial}: told its pooled estimate over {e.n} block(s), {shown} (free)"


def tell_failed_before(study: optuna.Study, trial: Trial, failed: tuple[int, str, str]) -> str:
    """A config that failed before is not run again on the budget: the same FAIL, free."""
    number, cls, message = failed
    why = f"not run again: trial #{number} failed ({message})"
    rec.fail(study, trial, cls, why, **{rec.FAILED_BEFORE: number})
    return f"not run again: the same config failed as {cls} in trial #{number} (free)"


def surplus(study: optuna.Study, trial: Trial) -> None:
    """A trial asked past the budget (another driver sharing the study reached it first)."""
    rec.fail(study, trial, "interrupted", "not run: another driver on this study reached the budget first")
