"""The study as a table: one row per trial, every parameter and metric, state and failure.

Reads the study only; nothing is re-measured. The HTML report, `show` and the results frames
(report/frames.py, which also write `report --format csv|json|parquet`) read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotuner.metrics import definitions, label
from autotuner.metrics import names as metric_names
from autotuner.search.estimates import Estimate, is_measurement, pool, trial_front
from autotuner.search.estimates import trial_feasible as feasible
from autotuner.study import records as rec


@dataclass
class StudyData:
    name: str
    storage: str  # redacted
    spec: dict[str, Any]
    environment: dict[str, Any]
    version: str
    directions: list[str]
    objectives: list[str]
    constraints: list[dict[str, Any]]
    params: list[str]
    trials: list[FrozenTrial]
    pick: dict[str, Any] | None
    race: list[dict[str, Any]] = field(default_factory=list)

    # Derived once: the report asks for them per trial, and a study can hold thousands.
    @cached_property
    def completed(self) -> list[FrozenTrial]:
        """Trials that measured their config (repeats told the pooled value are left out)."""
        return [t for t in self.trials if t.state == TrialState.COMPLETE and is_measurement(t)]

    @cached_property
    def estimates(self) -> dict[str, Estimate]:
        """Every config's pooled estimate: its trials and its race blocks."""
        return pool(self.trials, self.race)

    @cached_property
    def feasible(self) -> list[FrozenTrial]:
        return [t for t in self.completed if feasible(t)]

    @cached_property
    def feasible_numbers(self) -> frozenset[int]:
        return frozenset(t.number for t in self.feasible)

    @cached_property
    def front(self) -> list[FrozenTrial]:
        return trial_front(self.feasible, self.directions) if self.feasible else []

    def is_feasible(self, t: FrozenTrial) -> bool:
        return t.number in self.feasible_numbers

    @property
    def winner(self) -> int | None:
        return self.pick["winner"] if self.pick else None

    def config(self, t: FrozenTrial) -> dict[str, Any]:
        return rec.trial_config(t)

    @property
    def declared(self) -> dict[str, dict[str, Any]]:
        """The metrics the study's spec declares (its `metrics:` section)."""
        return dict(self.spec.get("metrics") or {})

    @cached_property
    def metric_names(self) -> list[str]:
        """Every metric a trial of this study may hold: the built-in ones, then the declared ones."""
        return metric_names(self.declared)

    def label(self, metric: str) -> str:
        """The metric as a header or axis title: with its unit where the spec declares one."""
        return label(metric, self.declared)

    def definitions(self) -> dict[str, str]:
        return definitions(self.declared)


def load(study: optuna.Study, storage: str) -> StudyData:
    spec = rec.stored_spec(study)
    trials = study.get_trials(deepcopy=False)
    params = list(spec.get("space", {})) or sorted({k for t in trials for k in t.params})
    return StudyData(
        name=study.study_name,
        storage=storage,
        spec=spec,
        environment=rec.environment(study),
        version=str(rec.study_attr(study, rec.VERSION, "?")),
        directions=[d.name.lower() for d in study.directions],
        objectives=[o["metric"] for o in spec.get("objectives", [])]
        or [f"objective_{i}" for i in range(len(study.directions))],
        constraints=list(spec.get("constraints", [])),
        params=params,
        trials=trials,
        pick=rec.stored_pick(study),
        race=rec.race_blocks(study),
    )
