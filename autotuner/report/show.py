"""`autotune studies` and `autotune show`: what is stored, at a glance. Reads only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from autotuner.progress import Progress, fmt_config
from autotuner.spec.schema import Constraint, Objective, config_key
from autotuner.study import records as rec
from autotuner.study.storage import default_url, load_study, open_storage, redact

if TYPE_CHECKING:
    from autotuner.search.estimates import Estimate


def list_studies(storage: str | None) -> int:
    out = Progress()
    urls = [storage] if storage else [f"sqlite:///{p}" for p in sorted(Path("studies").glob("*.db"))]
    rows = []
    for url in urls:
        st = open_storage(url, create=False)
        for s in optuna.get_all_study_summaries(st, include_best_trial=False):
            rows.append(
                [
                    s.study_name,
                    s.n_trials,
                    s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "-",
                    redact(url),
                ]
            )
    if not rows:
        out.say("no studies" + (f" in {redact(storage)}" if storage else " under studies/"))
        return 0
    out.table(["study", "trials", "started", "storage"], rows)
    return 0


def show_study(name: str, storage: str | None) -> int:
    out = Progress()
    url = storage or default_url(name)
    study = load_study(name, url)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    failures = Counter((rec.failure_class(t) or "?") for t in trials if t.state == TrialState.FAIL)
    env = rec.environment(study)
    out.say(f"study {name} ({redact(url)})")
    out.say(
        f"  objectives: {', '.join(d.name.lower() for d in study.directions)}; autotune "
        f"{rec.study_attr(study, rec.VERSION, '?')}; created {rec.study_attr(study, rec.CREATED, '?')}"
    )
    out.say(
        f"  machine: {env.get('cpu_model', '?')} x{env.get('cpu_cores', '?')}"
        + (f", GPUs: {', '.join(env['gpus'])}" if env.get("gpus") else "")
    )
    out.say("  trials: " + (", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items())) or "none"))
    if failures:
        out.say("  failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    pick = rec.stored_pick(study)
    _configs(out, study, trials, pick)
    if pick:
        out.say(f"  chosen: trial #{pick['winner']} by {pick['rule']}: {pick['reason']}")
        config = pick.get("config") or rec.trial_config(study.trials[pick["winner"]])
        out.say("  params: " + " ".join(f"{k}={v}" for k, v in config.items()))
        if pick.get("baseline"):
            out.say(f"  baseline: {pick['baseline'].get('text', '')}")
    return 0


def _configs(out: Progress, study: optuna.Study, trials: list, pick: dict[str, Any] | None) -> None:
    """The best configs by their pooled first objective, then (two or more objectives) the front
    of the feasible configs' pooled estimates: the same estimates and front as the run's summary."""
    from autotuner.search.estimates import feasible, front, pool, relative_spread

    spec = rec.stored_spec(study)
    try:
        objectives = [Objective.model_validate(o) for o in spec.get("objectives") or []]
        constraints = [Constraint.model_validate(c) for c in spec.get("constraints") or []]
    except ValueError as e:
        out.say(f"  configs: the stored spec's objectives or constraints do not read back ({e})")
        return
    if not objectives:
        out.say("  configs: the study stores no objectives")
        return
    estimates = pool(trials, rec.race_blocks(study))
    metrics = [o.metric for o in objectives]
    first = objectives[0]
    est = [e for e in estimates.values() if e.mean(first.metric) is not None]
    if not est:
        out.say("  no completed config")
        return
    chosen = _chosen_key(study, pick)
    conf = float(spec.get("pick", {}).get("confidence", 0.95))
    spread = {m: relative_spread(estimates, m) for m in metrics}

    def cell(e: Estimate, m: str) -> str:
        iv = e.interval(m, conf, spread[m])
        return f"{iv[0]:.4g} [{iv[1]:.4g}, {iv[2]:.4g}]" if iv else "-"

    def trial(e: Estimate) -> str:
        return ("*" if e.key == chosen else "") + f"#{e.first_trial}"

    est.sort(key=lambda e: e.mean(first.metric) or 0.0, reverse=first.direction == "maximize")
    out.say(f"  top configs by pooled {first.metric} ({int(conf * 100)}% interval over blocks; * chosen):")
    out.table(
        ["trial", "config", "blocks", first.metric],
        [[trial(e), fmt_config(e.config), e.n, cell(e, first.metric)] for e in est[:10]],
    )
    if len(objectives) < 2:
        out.say(f"  one objective ({first.direction} {first.metric}): no Pareto front to show")
        return
    ok = [e for e in estimates.values() if feasible(e, constraints)[0]]
    pareto = front(ok, objectives)
    if not pareto:
        out.say("  Pareto front: no feasible config measured every objective")
        return
    shown = list(pareto)
    if chosen in estimates and estimates[chosen] not in shown:
        shown.append(estimates[chosen])
    shown.sort(key=lambda e: e.mean(first.metric) or 0.0, reverse=first.direction == "maximize")
    on_front = {e.key for e in pareto}
    out.say(
        f"  Pareto front of the feasible configs by pooled estimates ({len(pareto)}): "
        + ", ".join(f"{o.direction[:3]} {o.metric}" for o in objectives)
    )
    rows = []
    for e in shown:
        note = "" if e.key != chosen else "chosen" if e.key in on_front else "chosen, off the front"
        rows.append([trial(e), fmt_config(e.config), e.n, *[cell(e, m) for m in metrics], note])
    out.table(["trial", "config", "blocks", *metrics, "note"], rows)


def _chosen_key(study: optuna.Study, pick: dict[str, Any] | None) -> str | None:
    """The config key of the stored choice (its config, else its winning trial's)."""
    if not pick:
        return None
    config = pick.get("config")
    if not config:
        winner = pick.get("winner")
        if not isinstance(winner, int) or not 0 <= winner < len(study.trials):
            return None
        config = rec.trial_config(study.trials[winner])
    return config_key(config)
