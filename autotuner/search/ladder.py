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

The measured trial keeps the whole ladder in its info, so levels a dead driver never stored are
stored when the study is resumed (`recover_levels`), never measured again.

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
    if not result.ok or not result.info.get(LADDER):
        return ""
    measured = study._storage.get_trial(trial._trial_id)
    n = _store_levels(spec, study, measured, config, result)
    return f" (+{n} load level(s) on the same server)" if n else ""


def recover_levels(
    spec: Spec, study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None
) -> int:
    """Store the load levels of measured trials whose levels were never told (the driver died
    between storing the trial and its levels): each measured trial keeps them in its info.
    `trials`: the study's trials, read already. Returns how many were stored."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    n = 0
    for t in trials:
        if t.state != TrialState.COMPLETE or rec.marker(t, rec.LADDER_OF) is not None:
            continue
        info = rec.info(t)
        if not info.get(LADDER):
            continue
        result = TrialResult(ok=True, metrics=rec.metrics(t), info=info)
        n += _store_levels(spec, study, t, rec.trial_config(t), result, trials)
    return n


def _store_levels(
    spec: Spec,
    study: optuna.Study,
    measured: optuna.trial.FrozenTrial,
    config: dict[str, Any],
    result: TrialResult,
    trials: list[optuna.trial.FrozenTrial] | None = None,
) -> int:
    """Add each level of `result`'s ladder not yet stored for `measured`; how many were added."""
    if measured.state != TrialState.COMPLETE:
        return 0
    have = {
        config_key(rec.trial_config(t))
        for t in (trials if trials is not None else study.get_trials(deepcopy=False))
        if rec.marker(t, rec.LADDER_OF) == measured.number
    }
    n = 0
    for entry in result.info.get(LADDER) or []:
        level = dict(entry["load"])
        if config_key({**config, **level}) in have:
            continue  # told before (a retried store, or a run that got this far)
        t = sibling_trial(spec, measured, config, result, level, entry["metrics"])
        if t is not None:
            study.add_trial(t)
            n += 1
    return n


__all__ = ["recover_levels", "sibling_trial", "tell_levels"]
