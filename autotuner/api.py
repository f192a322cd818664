"""The Python API: what the CLI does, for people who drive autotune from code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autotuner.errors import UsageError
from autotuner.pick import Candidate, Pick, Rule, candidates, decide
from autotuner.progress import Progress
from autotuner.result import TrialResult
from autotuner.spec import Spec, check_rule
from autotuner.spec_load import load_spec
from autotuner.storage import default_url, redact

REMEASURE_KEY = "remeasure"


@dataclass
class RunOutcome:
    study: str
    storage: str  # redacted
    best_config_path: Path | None
    pick: Pick | None
    trials: int


def _spec(spec: Spec | str | Path, study: str | None, storage: str | None) -> Spec:
    s = spec if isinstance(spec, Spec) else load_spec(spec)
    updates = {k: v for k, v in (("study", study), ("storage", storage)) if v is not None}
    if updates:
        from autotuner.spec_load import spec_from_dict, spec_to_dict

        s = spec_from_dict({**spec_to_dict(s), **updates}, "command line")
    return s


def run(
    spec: Spec | str | Path,
    *,
    trials: int | None = None,
    study: str | None = None,
    storage: str | None = None,
    executor: str = "local",
    address: str | None = None,
    progress: Progress | None = None,
    reports_dir: str | Path = "reports",
) -> RunOutcome:
    """Search, re-measure the top candidates, pick, and write the best-config YAML."""
    from autotuner.capabilities import probe
    from autotuner.driver import Session, drive, open_study
    from autotuner.executors import EXECUTORS, make_executor

    s = _spec(spec, study, storage)
    if trials is not None and trials < 1:
        raise UsageError("--trials must be at least 1")
    progress = progress or Progress()
    url = s.storage or default_url(s.study_name)
    if executor not in EXECUTORS:
        raise UsageError(f"--executor {executor!r} is not available; allowed: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise UsageError("--address applies to --executor ray")
    caps = probe()
    executor_obj = make_executor(executor, s, caps, address)
    st = open_study(s, url, caps, progress)
    if isinstance(spec, str | Path):
        st.set_user_attr("spec_path", str(spec))
    budget = trials or s.budget.trials
    if s.sampler.type == "grid":
        from autotuner.space import grid_size

        size = grid_size(s)
        if size is not None and size < budget:
            progress.say(f"the grid holds {size} configs: the budget is {size} trials, not {budget}")
            budget = size
    progress.say(
        f"study {s.study_name} in {redact(url)}: budget {budget} trials, executor {executor} "
        f"({executor_obj.slots} at once)"
    )
    session = Session(s, st, url, budget, caps, progress)
    try:
        drive(session, executor_obj, s.budget.wall_time_s)
        pick = choose(s, st, None, executor_obj, progress)
    finally:
        executor_obj.close()
    path = None
    if pick is not None:
        path = _export(s, st, pick, url, Path(reports_dir) / f"{s.study_name}.best.yaml")
    _summary(s, st, pick, progress)
    if path:
        progress.say(f"best config: {path}")
    html_path = report([s.study_name], storage=url, output=Path(reports_dir) / f"{s.study_name}.html")
    progress.say(f"report: {html_path}")
    db = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else redact(url)
    progress.say(f"study: {db}")
    return RunOutcome(s.study_name, redact(url), path, pick, len(st.trials))


def choose(
    spec: Spec, study: optuna.Study, rule_text: str | None, executor: Any, progress: Progress
) -> Pick | None:
    """Pick the winner. With an executor, re-measure the top candidates first (interleaved)."""
    if rule_text is not None:
        try:
            check_rule(rule_text)
        except ValueError as e:
            raise UsageError(f"--pick: {e}") from None
    o = spec.objectives[0]
    rule = Rule.parse(rule_text or f"{'max' if o.direction == 'maximize' else 'min'}:{o.metric}")
    trials = study.get_trials(deepcopy=False)
    cands = candidates(trials, [x.direction for x in spec.objectives], rule, spec.pick.top_k)
    if not cands:
        progress.say("no feasible completed trial: nothing to pick (see failures above)")
        return None
    stored: dict[str, Any] = dict(study.user_attrs.get(REMEASURE_KEY, {}))
    rounds: dict[str, list[dict[str, float]]] = dict(stored.get("rounds", {}))
    if executor is not None and spec.pick.rounds >= 2:
        progress.say(
            f"re-measuring the top {len(cands)} candidates, interleaved, {spec.pick.rounds} rounds: "
            + ", ".join(f"#{c.trial}" for c in cands)
        )
        out = executor.remeasure([c.config for c in cands], spec.pick.rounds, spec.pick.round_time_s)
        for i, c in enumerate(cands):
            got = out.get("rounds", {}).get(str(i))
            if got:
                rounds[str(c.trial)] = got
            err = out.get("errors", {}).get(str(i)) or out.get("errors", {}).get("all")
            if err:
                c.error = err
        study.set_user_attr(REMEASURE_KEY, {"rounds": rounds})
    for c in cands:
        c.rounds = [r[rule.metric] for r in rounds.get(str(c.trial), []) if rule.metric in r]
    metrics = {t.number: t.user_attrs for t in trials}
    pick = decide(cands, rule, Rule.parse(spec.pick.tie_break), spec.pick.confidence, metrics)
    study.set_user_attr("pick", pick.to_dict())
    return pick


def _export(spec: Spec, study: optuna.Study, pick: Pick, url: str, path: Path) -> Path:
    from autotuner.export import best_config, write_yaml

    rounds = dict(study.user_attrs.get(REMEASURE_KEY, {}).get("rounds", {}))
    return write_yaml(path, best_config(spec, study, pick, url, rounds))


def export(
    study_name: str,
    *,
    storage: str | None = None,
    output: str | Path | None = None,
    rule: str | None = None,
    fmt: str = "yaml",
    progress: Progress | None = None,
) -> Path | str:
    """Write the best-config YAML of a stored study again, by a chosen rule. Measures nothing.

    fmt="vllm" returns the `vllm serve` command line of the chosen config instead.
    """
    from autotuner.spec_load import spec_from_dict
    from autotuner.storage import load_study

    if fmt not in ("yaml", "vllm"):
        raise UsageError(f"--format {fmt!r}: allowed: yaml, vllm")
    progress = progress or Progress()
    url = storage or default_url(study_name)
    st = load_study(study_name, url)
    spec = spec_from_dict(st.user_attrs["spec"], f"study {study_name}")
    pick = choose(spec, st, rule, None, Progress(quiet=True) if fmt == "vllm" else progress)
    if pick is None:
        raise UsageError(f"study {study_name!r} has no feasible completed trial to export")
    if fmt == "vllm":
        return vllm_serve(spec, st.trials[pick.winner].user_attrs.get("config", {}))
    return _export(spec, st, pick, url, Path(output or f"reports/{study_name}.best.yaml"))


def vllm_serve(spec: Spec, config: dict[str, Any]) -> str:
    """`vllm serve MODEL --block-size 16 ...` from a vLLM study's chosen parameters."""
    import shlex

    if spec.model.external is None:
        raise UsageError("--format vllm needs a study whose model is external (the vLLM model name)")
    argv = ["vllm", "serve", spec.model.external]
    for k, v in config.items():
        if k in ("backend", "threads"):
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v is not False:
            argv += [flag, str(v)]
    return shlex.join(argv)


def report(
    studies: list[str], *, storage: str | None = None, output: str | Path | None = None, fmt: str = "html"
) -> Path:
    """Write the HTML report (several studies: fronts overlaid), or the trial table as CSV/JSON."""
    from autotuner import report_data
    from autotuner.storage import load_study

    if fmt not in ("html", "csv", "json"):
        raise UsageError(f"--format {fmt!r}: allowed: html, csv, json")
    if not studies:
        raise UsageError("name at least one study")
    if fmt != "html" and len(studies) > 1:
        raise UsageError(f"--format {fmt} writes one study's table; name one study")
    loaded = []
    for name in studies:
        url = storage or default_url(name)
        st = load_study(name, url)
        loaded.append((st, report_data.load(st, redact(url))))
    stem = "-vs-".join(studies)
    path = Path(output or f"reports/{stem}.{fmt}")
    if fmt != "html":
        return report_data.write_table(loaded[0][1], path, fmt)
    from autotuner.files import atomic_write_text
    from autotuner.report_html import build

    return atomic_write_text(path, build(loaded))


def bench(spec: Spec | str | Path, config: dict[str, Any]) -> tuple[dict[str, Any], TrialResult]:
    """Measure one config (no search, nothing stored). Unset parameters take their first value."""
    from autotuner.capabilities import probe
    from autotuner.driver import precheck
    from autotuner.executors.base import TrialRequest
    from autotuner.executors.local import LocalExecutor
    from autotuner.space import defaults

    s = _spec(spec, None, None)
    for k, v in config.items():
        if k not in s.space:
            raise UsageError(f"--set {k}: not a parameter of the spec's space; allowed: {', '.join(s.space)}")
        kind = s.space[k].type
        # Values outside the searched range are fine (bench measures what it is told); types are not.
        if kind == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise UsageError(f"--set {k}={v}: {k} is an int parameter; give a whole number")
        if kind == "float" and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise UsageError(f"--set {k}={v}: {k} is a float parameter; give a number")
    full = {**defaults(s), **(s.baseline or {}), **config}
    caps = probe()
    known = precheck(s, full, caps, [])
    if known is not None:
        return full, known
    ex = LocalExecutor(s, caps)
    try:
        return full, ex.submit(TrialRequest(0, full)).result()
    finally:
        ex.close()


def _summary(spec: Spec, study: optuna.Study, pick: Pick | None, progress: Progress) -> None:
    from autotuner.pick import completed_feasible, pareto_front

    directions = [o.direction for o in spec.objectives]
    front = pareto_front(completed_feasible(study.get_trials(deepcopy=False)), directions)
    params = list(spec.space)
    metrics = [o.metric for o in spec.objectives] + [
        c.metric for c in spec.constraints if c.metric not in {o.metric for o in spec.objectives}
    ]
    if front:
        progress.say(f"\nPareto-optimal feasible configs ({len(front)}):")
        rows = []
        for t in sorted(front, key=lambda t: t.values[0], reverse=directions[0] == "maximize"):
            cfg = t.user_attrs.get("config", t.params)
            mark = "*" if pick and t.number == pick.winner else ""
            rows.append(
                [
                    f"{mark}#{t.number}",
                    *[cfg.get(p, "-") for p in params],
                    *[t.user_attrs.get(m) for m in metrics],
                ]
            )
        progress.table(["trial", *params, *metrics], rows)
    if pick:
        chosen = next(c for c in pick.candidates if c.trial == pick.winner)
        ci = (
            f" (mean {chosen.mean:.4g}, {int(pick.confidence * 100)}% CI "
            f"{chosen.ci[0]:.4g}..{chosen.ci[1]:.4g})"
            if chosen.ci
            else ""
        )
        progress.say(f"\nchosen: trial #{pick.winner} by {pick.rule}{ci}")
        progress.say(f"  {pick.reason}")


__all__ = ["Candidate", "RunOutcome", "bench", "export", "report", "run"]
