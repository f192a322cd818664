"""The study as a table: one row per trial, every parameter and metric, state and failure.

Reads the study only; nothing is re-measured. Shared by the HTML report and the CSV/JSON export.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotuner.files import atomic_write, atomic_write_text
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


def rows(data: StudyData) -> list[dict[str, Any]]:
    """Flat rows: trial, state, feasible, failure, duration, param:*, every metric."""
    out = []
    for t in data.trials:
        config = data.config(t)
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "feasible": (t.state == TrialState.COMPLETE and feasible(t)),
            "failure_class": rec.failure_class(t),
            "failure_message": rec.failure_message(t) or None,
            "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None,
        }
        for p in data.params:
            row[f"param:{p}"] = config.get(p)
        for m in data.metric_names:
            v = rec.metric(t, m)
            row[m] = v if isinstance(v, int | float) and math.isfinite(v) else None
        out.append(row)
    return out


def write_table(data: StudyData, path: Path, fmt: str) -> Path:
    table = rows(data)
    if fmt == "json":
        return atomic_write_text(path, json.dumps({"study": data.name, "trials": table}, indent=1))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else ["trial", "state"])
            writer.writeheader()
            writer.writerows(table)

    return atomic_write(path, write_csv)
