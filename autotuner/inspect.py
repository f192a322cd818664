"""`autotune studies` and `autotune show`: what is stored, at a glance. Reads only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autotuner.progress import Progress
from autotuner.storage import default_url, load_study, open_storage, redact


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
    failures = Counter(t.user_attrs.get("failure_class", "?") for t in trials if t.state == TrialState.FAIL)
    env = study.user_attrs.get("environment", {})
    out.say(f"study {name} ({redact(url)})")
    out.say(
        f"  objectives: {', '.join(d.name.lower() for d in study.directions)}; autotune "
        f"{study.user_attrs.get('autotune_version', '?')}; created {study.user_attrs.get('created', '?')}"
    )
    out.say(
        f"  machine: {env.get('cpu_model', '?')} x{env.get('cpu_cores', '?')}"
        + (f", GPUs: {', '.join(env['gpus'])}" if env.get("gpus") else "")
    )
    out.say("  trials: " + (", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items())) or "none"))
    if failures:
        out.say("  failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    pick = study.user_attrs.get("pick")
    if pick:
        out.say(f"  chosen: trial #{pick['winner']} by {pick['rule']}: {pick['reason']}")
        t = study.trials[pick["winner"]]
        out.say("  params: " + " ".join(f"{k}={v}" for k, v in t.user_attrs.get("config", {}).items()))
    return 0
