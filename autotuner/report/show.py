"""`autotune studies` and `autotune show`: what is stored, at a glance. Reads only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autotuner.progress import Progress, fmt_config
from autotuner.report import data as report_data
from autotuner.report import frames as fr
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
        f"  objectives: {_objectives(study)}; autotune "
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
    _configs(out, study, url)
    if pick:
        out.say(f"  chosen: trial #{pick['winner']} by {pick['rule']}: {pick['reason']}")
        config = pick.get("config") or rec.trial_config(study.trials[pick["winner"]])
        out.say("  params: " + " ".join(f"{k}={v}" for k, v in config.items()))
        if pick.get("baseline"):
            out.say(f"  baseline: {pick['baseline'].get('text', '')}")
    return 0


def _objectives(study: optuna.Study) -> str:
    """The objectives with their metrics ('maximize throughput_items_s, minimize latency_p95_ms')."""
    stored = rec.stored_spec(study).get("objectives") or []
    metrics = [o.get("metric") for o in stored if isinstance(o, dict)]
    dirs = [d.name.lower() for d in study.directions]
    if len(metrics) != len(dirs):
        return ", ".join(dirs)
    return ", ".join(f"{d} {m}" for d, m in zip(dirs, metrics, strict=True))


def _configs(out: Progress, study: optuna.Study, url: str) -> None:
    """The best feasible configs by their pooled first objective, those that break a constraint
    apart (with the constraint), then (two or more objectives) the front of the feasible configs'
    pooled estimates. All read from the results frames (report/frames.py): the same estimates
    and front as the run's summary, the report and the best-config YAML."""

    d = report_data.load(study, redact(url))
    try:
        objectives = fr.objectives(d)
        fr.constraints(d)
    except ValueError as e:
        out.say(f"  configs: the stored spec's objectives or constraints do not read back ({e})")
        return
    if not objectives:
        out.say("  configs: the study stores no objectives")
        return
    configs = fr.study_frames(d).configs
    first = objectives[0]
    metrics = [o.metric for o in objectives]
    if first.metric not in configs or configs[first.metric].isna().all():
        out.say("  no completed config")
        return
    est = configs[configs[first.metric].notna()]
    conf = fr.confidence(d)

    def cell(r: Any, m: str) -> str:
        if m not in r or r[m] != r[m]:
            return "-"
        lo, hi = r[f"{m}_low"], r[f"{m}_high"]
        return f"{r[m]:.4g} [{lo:.4g}, {hi:.4g}]" if lo == lo and hi == hi else f"{r[m]:.4g}"

    def trial(r: Any) -> str:
        first_trial = "race only" if r["first_trial"] != r["first_trial"] else f"#{int(r['first_trial'])}"
        return ("*" if r["chosen"] else "") + first_trial

    def config(r: Any) -> str:
        return fmt_config(d.estimates[r["config_key"]].config)

    ok = est[est["feasible"] == "yes"]
    bad = est[est["feasible"] != "yes"]
    out.say(
        f"  top configs by pooled {first.metric} ({int(conf * 100)}% interval over blocks; * chosen)"
        + (f"; {len(bad)} that break a constraint are listed apart" if len(bad) else "")
        + ":"
    )
    if len(ok):
        out.table(
            ["trial", "config", "blocks", first.metric],
            [[trial(r), config(r), r["blocks"], cell(r, first.metric)] for _, r in ok.head(10).iterrows()],
        )
    else:
        out.say("    none: every measured config breaks a constraint")
    if len(bad):
        out.say(f"  configs that break a constraint ({len(bad)}; never chosen):")
        out.table(
            ["trial", "config", "blocks", first.metric, "breaks"],
            [
                [trial(r), config(r), r["blocks"], cell(r, first.metric), r["broken"] or "-"]
                for _, r in bad.head(10).iterrows()
            ],
        )
    if len(objectives) < 2:
        out.say(f"  one objective ({first.direction} {first.metric}): no Pareto front to show")
        return
    pareto = est[est["on_front"]]
    if not len(pareto):
        out.say("  Pareto front: no feasible config measured every objective")
        return
    shown = est[est["on_front"] | est["chosen"]]
    out.say(
        f"  Pareto front of the feasible configs by pooled estimates ({len(pareto)}): "
        + ", ".join(f"{o.direction[:3]} {o.metric}" for o in objectives)
    )
    rows = []
    for _, r in shown.iterrows():
        note = "" if not r["chosen"] else "chosen" if r["on_front"] else "chosen, off the front"
        rows.append([trial(r), config(r), r["blocks"], *[cell(r, m) for m in metrics], note])
    out.table(["trial", "config", "blocks", *metrics, "note"], rows)
