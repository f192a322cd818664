"""Load levels as trials: one server start answers every load level of the space.

A runner with load-side knobs (vllm: `rate_rps`, `concurrency`) measures, in one trial, every
level of them that the space lists, on the one server the trial started (runners.ladder). The
trial's own result is the level it was asked for; this module stores each other level as a trial
of its own, right after the measured one is told:

- the same params, its load value in place of the asked one, COMPLETE with that level's
  serving metrics on top of the measured trial's server-side ones (start time, memory,
  accuracy, foreign load), its constraint violations and objective values;
- marked `ladder_of: N` (the trial whose server measured it), so it does not use the trial
  budget (the budget counts server starts) and the report can say where it came from.

Every reader then sees every level as it sees any trial: the sampler (its params and values),
the arms (a block of its config, so a later ask for that engine config at that load is answered
free with its pooled value), the Pareto front, the pick and the race.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from autotuner.result import TrialResult
from autotuner.runners.ladder import LADDER
from autotuner.spec.schema import Spec, config_key
from autotuner.study import records as rec


def sibling_metrics(result: TrialResult, level_metrics: dict[str, float]) -> dict[str, float]:
    """A level's metrics: the level's own serving figures over the measured trial's."""
    return {**result.metrics, **{k: float(v) for k, v in level_metrics.items()}}


def sibling_trial(
    spec: Spec,
    measured: optuna.trial.FrozenTrial,
    config: dict[str, Any],
    result: TrialResult,
    level: dict[str, Any],
    level_metrics: dict[str, float],
) -> optuna.trial.FrozenTrial | None:
    """The trial that stores one other load level, or None where an objective is not finite."""
    metrics = sibling_metrics(result, level_metrics)
    values = [metrics.get(o.metric, math.nan) for o in spec.objectives]
    if not all(math.isfinite(v) for v in values):
        return None
    violations = {}
    for c in spec.constraints:
        v = metrics.get(c.metric, math.nan)
        violations[c.text] = c.violation(v) if math.isfinite(v) else 1.0
    params = dict(measured.params)
    params.update({k: v for k, v in level.items() if k in measured.distributions})
    info = {k: v for k, v in result.info.items() if k != LADDER}
    attrs = rec.result_attrs(TrialResult(ok=True, metrics=metrics, info=info))
    attrs.update({rec.CONFIG: {**config, **level}, rec.LADDER_OF: measured.number})
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        values=values,
        params=params,
        distributions=dict(measured.distributions),
        user_attrs=attrs,
        system_attrs={f"{rec.CONSTRAINTS}:{k}": float(v) for k, v in violations.items()},
    )


def tell_levels(
    spec: Spec, study: optuna.Study, trial: Trial, config: dict[str, Any], result: TrialResult
) -> str:
    """Store the other load levels a measured trial brought back; what to add to its summary."""
    levels = result.info.get(LADDER) or []
    if not result.ok or not levels:
        return ""
    measured = study._storage.get_trial(trial._trial_id)
    if measured.state != TrialState.COMPLETE:
        return ""
    have = {
        config_key(rec.trial_config(t))
        for t in study.get_trials(deepcopy=False)
        if rec.marker(t, rec.LADDER_OF) == measured.number
    }
    n = 0
    for entry in levels:
        level = dict(entry["load"])
        if config_key({**config, **level}) in have:
            continue  # told before (a retried store)
        t = sibling_trial(spec, measured, config, result, level, entry["metrics"])
        if t is not None:
            study.add_trial(t)
            n += 1
    return f" (+{n} load level(s) on the same server)" if n else ""


__all__ = ["sibling_trial", "tell_levels"]
