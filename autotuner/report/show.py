"""`autotune studies` and `autotune show`: what is stored, at a glance. Reads only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autotuner.progress import Progress
from autotuner.study import records as rec
from autotuner.study.storage import default_url, load_study, open_storage, redact


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
    _top_configs(out, study, trials)
    pick = rec.stored_pick(study)
    if pick:
        out.say(f"  chosen: trial #{pick['winner']} by {pick['rule']}: {pick['reason']}")
        config = pick.get("config") or rec.trial_config(study.trials[pick["winner"]])
        out.say("  params: " + " ".join(f"{k}={v}" for k, v in config.items()))
        if pick.get("baseline"):
            out.say(f"  baseline: {pick['baseline'].get('text', '')}")
    return 0


def _top_configs(out: Progress, study: optuna.Study, trials: list) -> None:
    """The best configs by their pooled estimates (every block of a config, one row)."""
    from autotuner.search.estimates import pool, relative_spread

    spec = rec.stored_spec(study)
    objectives = spec.get("objectives") or []
    if not objectives:
        return
    metric, direction = objectives[0]["metric"], objectives[0]["direction"]
    est = [e for e in pool(trials, rec.race_blocks(study)).values() if e.mean(metric) is not None]
    if not est:
        return
    est.sort(key=lambda e: e.mean(metric) or 0.0, reverse=direction == "maximize")
    rel = relative_spread({e.key: e for e in est}, metric)
    conf = float(spec.get("pick", {}).get("confidence", 0.95))
    rows = []
    for e in est[:10]:
        iv = e.interval(metric, conf, rel)
        rows.append(
            [
                f"#{e.first_trial}",
                " ".join(f"{k}={v}" for k, v in e.config.items()),
                e.n,
                f"{iv[0]:.4g} [{iv[1]:.4g}, {iv[2]:.4g}]" if iv else "-",
            ]
        )
    out.say(f"  top configs by pooled {metric} ({int(conf * 100)}% interval over blocks):")
    out.table(["trial", "config", "blocks", metric], rows)
