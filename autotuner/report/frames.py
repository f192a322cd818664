"""A study's results as pandas frames: what the console, `show`, the report and the export say.

    import autotuner
    r = autotuner.results("quickstart")            # or ["a", "b"]: several studies, side by side
    r.trials, r.configs, r.pareto, r.race, r.race_rounds

One row per trial (params, every metric, state, failure, block kind, seconds, foreign load), one
per config (its pooled estimate of every metric with the interval and the blocks it rests on,
feasibility with the constraint it breaks, on the front, chosen), the feasible Pareto front of the
pooled estimates, and the race (one row per candidate; one per candidate and round). Every frame
has a `study` column, so several studies concatenate into one. The estimates are those of
`autotuner.search.estimates`, the same the pick, `show` and the best-config YAML read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from autotuner.files import atomic_write, atomic_write_text
from autotuner.report import data as report_data
from autotuner.search.estimates import NOT_LAUNCHED, feasible, front, relative_spread
from autotuner.search.pick import race_status
from autotuner.spec.schema import Constraint, Objective, config_key
from autotuner.study import records as rec
from autotuner.study.storage import default_url, load_study, redact

if TYPE_CHECKING:
    import pandas as pd

    from autotuner.report.data import StudyData

PARAM = "param:"  # a parameter's column: param:batch_size (metrics keep their own names)
FRAMES = ("trials", "configs", "pareto", "race", "race_rounds")


@dataclass
class Results:
    """The frames of one study or several (concatenated, told apart by their `study` column)."""

    trials: pd.DataFrame
    configs: pd.DataFrame
    pareto: pd.DataFrame
    race: pd.DataFrame
    race_rounds: pd.DataFrame

    def frames(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in FRAMES}

    def chosen(self) -> pd.DataFrame:
        """The chosen config of each study (one row per study that has a choice)."""
        return self.configs[self.configs["chosen"]]


def results(study: str | list[str], storage: str | None = None) -> Results:
    """The frames of the named stored study (or studies, each at `storage` or its default
    sqlite:///studies/NAME.db). Reads only; nothing is re-measured."""

    names = [study] if isinstance(study, str) else list(study)
    datas = []
    for name in names:
        url = storage or default_url(name)
        datas.append(report_data.load(load_study(name, url), redact(url)))
    return frames_of(datas)


def frames_of(datas: list[StudyData]) -> Results:
    import pandas as pd  # noqa: PLC0415 (heavy: pandas)

    parts = [study_frames(d) for d in datas]
    return Results(
        **{
            name: pd.concat([getattr(p, name) for p in parts], ignore_index=True)
            if len(parts) > 1
            else getattr(parts[0], name)
            for name in FRAMES
        }
    )


def objectives(d: StudyData) -> list[Objective]:
    return [Objective.model_validate(o) for o in d.spec.get("objectives") or []]


def constraints(d: StudyData) -> list[Constraint]:
    return [Constraint.model_validate(c) for c in d.constraints]


def confidence(d: StudyData) -> float:
    """The study's pick confidence: as the stored choice used it, else as the spec gives it."""
    if d.pick and d.pick.get("confidence"):
        return float(d.pick["confidence"])
    return float((d.spec.get("pick") or {}).get("confidence", 0.95))


def chosen_key(d: StudyData) -> str | None:
    """The config key of the stored choice (its config, else its winning trial's)."""
    if not d.pick:
        return None
    config = d.pick.get("config")
    if not config:
        w = d.pick.get("winner")
        if not isinstance(w, int) or not 0 <= w < len(d.trials):
            return None
        config = rec.trial_config(d.trials[w])
    return config_key(config)


def block_kind(t: FrozenTrial) -> str:
    """What a trial was as a measurement: search, repeat, retry, load-retry, under-load (a block
    disturbed by another process), pooled (a repeat told the pooled value, no block), refused
    (known before launch), failed, or running."""
    failure = rec.failure_class(t)
    if t.state == TrialState.RUNNING:
        return "running"
    if t.state == TrialState.PRUNED and failure in NOT_LAUNCHED:
        return "refused"
    if rec.pooled_from(t) is not None:
        return "pooled"
    if failure == "under-load" or (t.state == TrialState.COMPLETE and rec.under_load(t)):
        return "under-load"
    if t.state != TrialState.COMPLETE:
        return "failed"
    for marker, kind in ((rec.REPEAT_OF, "repeat"), (rec.LOAD_RETRY, "load-retry"), (rec.RETRY_OF, "retry")):
        if rec.marker(t, marker) is not None:
            return kind
    return "search"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def trial_rows(d: StudyData) -> list[dict[str, Any]]:
    out = []
    for t in d.trials:
        config = d.config(t)
        row: dict[str, Any] = {
            "study": d.name,
            "trial": t.number,
            "state": t.state.name,
            "feasible": d.is_feasible(t),  # a measuring COMPLETE trial within its own constraints
            "failure_class": rec.failure_class(t),
            "failure_message": rec.failure_message(t) or None,
            "block": block_kind(t),
            "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None,
            "foreign_load": rec.metric(t, "foreign_load"),
            "config_key": config_key(config) if config else None,
        }
        for p in d.params:
            row[PARAM + p] = config.get(p)
        for m in d.metric_names:
            row[m] = _num(rec.metric(t, m))
        out.append(row)
    return out


def _metrics_of(d: StudyData) -> list[str]:
    """The metrics with a pooled value in some config: the objectives and constraints first."""
    first = [o.metric for o in objectives(d)] + [c.metric for c in constraints(d)]
    seen = {m for e in d.estimates.values() for b in e.blocks for m in b.metrics}
    rest = [m for m in d.metric_names if m in seen]
    return [m for m in dict.fromkeys([*first, *rest]) if m in seen]


def broken(e: Any, cons: list[Constraint]) -> str:
    """Every constraint a config's pooled estimate breaks, with its value ('accuracy_cosine >= 0.99
    (accuracy_cosine=0.896)'), or the constraint whose metric it never measured."""
    out = []
    for c in cons:
        v = e.mean(c.metric)
        if v is None:
            out.append(f"{c.text} ({c.metric} not measured)")
        elif c.violation(v) > 0:
            out.append(f"{c.text} ({c.metric}={v:.4g})")
    return "; ".join(out)


def config_rows(d: StudyData) -> list[dict[str, Any]]:
    """Every config once, sorted by its pooled first objective (best first)."""
    objs, cons = objectives(d), constraints(d)
    conf = confidence(d)
    metrics = _metrics_of(d)
    spread = {m: relative_spread(d.estimates, m) for m in metrics}
    chosen = chosen_key(d)
    ok = [e for e in d.estimates.values() if feasible(e, cons)[0]]
    on_front = {e.key for e in front(ok, objs)} if objs else set()
    rows = []
    for e in d.estimates.values():
        good, why = feasible(e, cons)
        row: dict[str, Any] = {
            "study": d.name,
            "config_key": e.key,
            "first_trial": e.first_trial if e.first_trial >= 0 else None,
            **{PARAM + p: e.config.get(p) for p in d.params},
            "feasible": "yes" if good else "unknown" if why and why.endswith("not measured") else "no",
            "broken": None if good else broken(e, cons),
            "blocks": e.n,
            "under_load": e.under_load,
            "measure_s": round(e.measure_s, 3),
            "on_front": e.key in on_front,
            "chosen": e.key == chosen,
            "confidence": conf,
        }
        for m in metrics:
            iv = e.interval(m, conf, spread[m])
            mean = iv[0] if iv else e.mean(m)
            row[m] = mean
            row[f"{m}_low"] = iv[1] if iv else None
            row[f"{m}_high"] = iv[2] if iv else None
            row[f"{m}_blocks"] = len(e.values(m))
        rows.append(row)
    if objs and objs[0].metric in metrics:
        o = objs[0]
        sign = -1.0 if o.direction == "maximize" else 1.0
        rows.sort(key=lambda r: (r[o.metric] is None, sign * (r[o.metric] or 0.0)))
    return rows


def race_rows(d: StudyData) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The race as the stored choice recorded it: per candidate, and per candidate and round."""

    pick = d.pick or {}
    winner = d.winner if d.winner is not None else -2
    cands, rounds = [], []
    for i, c in enumerate(pick.get("candidates", [])):
        key = config_key(c["config"])
        ci = c.get("ci")
        cands.append(
            {
                "study": d.name,
                "candidate": i,
                "trial": c["trial"] if c["trial"] >= 0 else None,
                "config_key": key,
                **{PARAM + p: c["config"].get(p) for p in d.params},
                "rule": pick.get("rule"),
                "before_race": _num(c.get("value")),
                "rounds": len(c.get("rounds", [])),
                "mean": _num(c.get("mean")),
                "ci_low": ci[0] if ci else None,
                "ci_high": ci[1] if ci else None,
                "status": race_status(c, winner, pick.get("tied_with", [])),
                "baseline": bool(c.get("baseline")),
            }
        )
        for r, v in enumerate(c.get("rounds", [])):
            rounds.append(
                {
                    "study": d.name,
                    "candidate": i,
                    "trial": cands[-1]["trial"],
                    "config_key": key,
                    "round": r,
                    "value": v,
                }
            )
    return cands, rounds


def study_frames(d: StudyData) -> Results:
    import pandas as pd  # noqa: PLC0415 (heavy: pandas)

    cands, rounds = race_rows(d)
    configs = pd.DataFrame(config_rows(d))
    if configs.empty:
        configs = pd.DataFrame(columns=["study", "config_key", "feasible", "on_front", "chosen"])
    return Results(
        trials=pd.DataFrame(trial_rows(d)),
        configs=configs,
        pareto=configs[configs["on_front"].astype(bool)].reset_index(drop=True),
        race=pd.DataFrame(
            cands, columns=None if cands else ["study", "candidate", "trial", "config_key", "status"]
        ),
        race_rounds=pd.DataFrame(
            rounds,
            columns=None if rounds else ["study", "candidate", "trial", "config_key", "round", "value"],
        ),
    )


TABLE_FORMATS = ("csv", "json", "parquet")


def write_frames(res: Results, path: Path, fmt: str, studies: list[str]) -> list[Path]:
    """Write the frames: json as one file ({"study", "trials", "configs", ...}); csv and parquet
    as PATH (the trials) and PATH's siblings STEM.configs.EXT, STEM.pareto.EXT, STEM.race.EXT,
    STEM.race_rounds.EXT. Returns the paths written, PATH first."""

    if fmt == "json":
        body = {
            "study": studies[0] if len(studies) == 1 else studies,
            **{name: json.loads(df.to_json(orient="records")) for name, df in res.frames().items()},
        }
        return [atomic_write_text(path, json.dumps(body, indent=1) + "\n")]
    stem = path.name.removesuffix(f".{fmt}")
    out = []
    for name, df in res.frames().items():
        target = path if name == "trials" else path.with_name(f"{stem}.{name}.{fmt}")
        if fmt == "csv":
            out.append(atomic_write(target, lambda tmp, df=df: df.to_csv(tmp, index=False), ".csv"))
        else:
            _need_pyarrow()
            out.append(atomic_write(target, lambda tmp, df=df: _parquet(df, tmp), ".parquet"))
    return out


def _parquet(df: pd.DataFrame, tmp: str) -> None:
    # Columns that mix types (a param that is a number in one config and text in another) are
    # written as text, which parquet needs; numbers, booleans and text columns keep their type.
    fixed = df.copy()
    for col in fixed.columns:
        if fixed[col].dtype == object:
            kinds = {type(v) for v in fixed[col] if v is not None and v == v}
            if len(kinds) > 1:
                fixed[col] = [None if v is None or v != v else str(v) for v in fixed[col]]
    fixed.to_parquet(tmp, index=False, engine="pyarrow")


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401, PLC0415 (optional dependency)
    except ImportError as e:
        from autotuner.errors import UsageError  # noqa: PLC0415 (optional dependency)

        raise UsageError("--format parquet needs pyarrow: pip install pyarrow") from e
