"""The Python API: what the CLI does, for people who drive autotune from code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from autotuner.errors import UsageError
from autotuner.progress import Progress, fmt_config
from autotuner.result import TrialResult
from autotuner.search.estimates import config_key
from autotuner.search.pick import Candidate, Pick, Rule, baseline_gain, decide, race_status
from autotuner.spec.loading import load_spec
from autotuner.spec.schema import Spec, check_rule
from autotuner.study import records as rec
from autotuner.study.storage import default_url, redact


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
        from autotuner.spec.loading import spec_from_dict, spec_to_dict

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
    from autotuner.execution import EXECUTORS, make_executor
    from autotuner.execution.capabilities import probe
    from autotuner.search.driver import Session, drive, open_study

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
        rec.set_spec_path(st, str(spec))
    budget = trials or s.budget.trials
    if s.sampler.type == "grid":
        from autotuner.search.space import grid_size

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
    """Pick the winner from the configs' pooled estimates. With an executor, race the contenders
    first (interleaved rounds, a fresh process per block); without one, read the last race."""
    from autotuner.execution.base import TrialRequest
    from autotuner.search.estimates import pool
    from autotuner.search.race import contenders, race_block_record, run_race

    if rule_text is not None:
        try:
            check_rule(rule_text)
        except ValueError as e:
            raise UsageError(f"--pick: {e}") from None
    o = spec.objectives[0]
    rule = Rule.parse(rule_text or f"{'max' if o.direction == 'maximize' else 'min'}:{o.metric}")
    trials = study.get_trials(deepcopy=False)
    stored = rec.race_blocks(study)
    estimates = pool(trials, stored)
    cands = contenders(spec, estimates, rule)
    if not cands:
        progress.say("no feasible completed trial: nothing to pick (see failures above)")
        return None
    base_cfg = baseline_config(spec)
    base: Candidate | None = None
    if base_cfg is not None:
        k = config_key(base_cfg)
        base = next((c for c in cands if config_key(c.config) == k), None)
        if base is None:
            e = estimates.get(k)
            base = Candidate(
                trial=e.first_trial if e else -1,
                config=base_cfg,
                value=(e.mean(rule.metric) or float("nan")) if e else float("nan"),
                blocks=e.n if e else 0,
                baseline=True,
            )
    tie_breaks = [Rule.parse(t) for t in spec.pick.tie_break]
    racers = cands + ([base] if base is not None and base.baseline else [])
    if executor is not None and spec.pick.rounds >= 1 and (len(cands) > 1 or (base and base.baseline)):
        if base is not None and base.baseline and _refused(spec, base_cfg or {}, executor, trials):
            racers.remove(base)
            base = None
        race_id = 1 + max((int(b.get("race", 0)) for b in stored), default=0)
        blocks = list(stored)
        progress.say(
            f"\nracing {len(cands)} contender(s)"
            + (" and the baseline" if base is not None and base.baseline else "")
            + f" on {rule}: {spec.pick.rounds}-{spec.pick.max_rounds} interleaved rounds of "
            f"{spec.pick.round_time_s:g} s blocks, each in a fresh worker: "
            + ", ".join(f"#{c.trial}" for c in cands)
        )

        def measure(config: dict[str, Any]) -> TrialResult:
            req = TrialRequest(-1, config, meta={"block_s": block_seconds(spec, estimates, config)})
            try:
                return executor.submit(req).result()
            except Exception as e:  # noqa: BLE001 - an executor fault drops the candidate only
                return TrialResult.failure("error", f"executor: {type(e).__name__}: {e}")

        def on_block(c: Candidate, r: int, res: TrialResult, loaded: bool) -> None:
            blocks.append({**race_block_record(c, r, res, loaded), "race": race_id})
            rec.save_race(study, blocks)

        def breaks(c: Candidate) -> str | None:
            from autotuner.search.estimates import Block, Estimate, feasible

            e = estimates.get(config_key(c.config)) or Estimate(config_key(c.config), c.config)
            mixed = Estimate(e.key, e.config, list(e.trials), list(e.blocks))
            mixed.blocks += [Block(m) for m in c.round_metrics]
            return feasible(mixed, spec.constraints)[1]

        run_race(spec, rule, racers, measure, on_block, progress.say, breaks)
    elif stored:
        _replay_last_race(racers, stored, rule)
    pick = decide(racers, rule, tie_breaks, spec.pick.confidence, spec.pick.tie_tolerance)
    if base is not None:
        if not base.baseline and base.trial == pick.winner:
            pick.baseline = {
                "config": base.config,
                "text": "the baseline is the chosen config",
                "significant": False,
            }
        elif base.round_metrics:
            pick.baseline = baseline_gain(pick.chosen, base, rule, spec.pick.confidence)
        else:
            pick.baseline = {
                "config": base.config,
                "text": "the baseline was not measured beside the winner, so no gain over it is claimed",
                "significant": False,
            }
    rec.save_pick(study, pick.to_dict())
    return pick


MIN_BATCHES_PER_BLOCK = 5


def block_seconds(spec: Spec, estimates: dict[str, Any], config: dict[str, Any]) -> float:
    """A race block lasts pick.round_time_s, or long enough for 5 batches of a slow config (its
    mean batch latency from the search), so that a block is never one or two batches."""
    e = estimates.get(config_key(config))
    lat = e.mean("latency_mean_ms") if e is not None else None
    if not lat:
        return spec.pick.round_time_s
    return max(spec.pick.round_time_s, MIN_BATCHES_PER_BLOCK * float(lat) / 1000.0)


def baseline_config(spec: Spec) -> dict[str, Any] | None:
    """The spec's baseline as a full config (unset parameters at their first value)."""
    if not spec.baseline:
        return None
    from autotuner.search.space import complete

    return complete(spec, dict(spec.baseline))


def _refused(spec: Spec, config: dict[str, Any], executor: Any, trials: list[Any]) -> bool:
    from autotuner.search.driver import precheck

    return precheck(spec, config, getattr(executor, "caps", {}), trials) is not None


def _replay_last_race(racers: list[Candidate], stored: list[dict[str, Any]], rule: Rule) -> None:
    """Without an executor (export), the last race's rounds stand in for a new race."""
    last = max(int(b.get("race", 0)) for b in stored)
    mine = [b for b in stored if int(b.get("race", 0)) == last and not b.get("under_load")]
    for c in racers:
        k = config_key(c.config)
        for b in sorted((b for b in mine if b["key"] == k), key=lambda b: b["round"]):
            c.round_metrics.append(dict(b["metrics"]))
            v = b["metrics"].get(rule.metric)
            c.rounds.append(float(v) if v is not None else float("nan"))


def _export(spec: Spec, study: optuna.Study, pick: Pick, url: str, path: Path) -> Path:
    from autotuner.report.export import best_config, write_yaml

    return write_yaml(path, best_config(spec, study, pick, url))


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
    from autotuner.spec.loading import spec_from_dict
    from autotuner.study.storage import load_study

    if fmt not in ("yaml", "vllm"):
        raise UsageError(f"--format {fmt!r}: allowed: yaml, vllm")
    progress = progress or Progress()
    url = storage or default_url(study_name)
    st = load_study(study_name, url)
    spec = spec_from_dict(rec.stored_spec(st), f"study {study_name}")
    pick = choose(spec, st, rule, None, Progress(quiet=True) if fmt == "vllm" else progress)
    if pick is None:
        raise UsageError(f"study {study_name!r} has no feasible completed trial to export")
    if fmt == "vllm":
        return vllm_serve(spec, pick.config)
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
    from autotuner.report import data as report_data
    from autotuner.study.storage import load_study

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
    from autotuner.report.html import build

    return atomic_write_text(path, build(loaded))


def bench(spec: Spec | str | Path, config: dict[str, Any]) -> tuple[dict[str, Any], TrialResult]:
    """Measure one config (no search, nothing stored). Unset parameters take their first value."""
    from autotuner.execution.base import TrialRequest
    from autotuner.execution.capabilities import probe
    from autotuner.execution.local import LocalExecutor
    from autotuner.search.driver import precheck
    from autotuner.search.space import defaults

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
    """The front of the configs' pooled estimates, the race side by side, and the choice."""
    from autotuner.search.estimates import feasible, front, pool, relative_spread

    estimates = pool(study.get_trials(deepcopy=False), rec.race_blocks(study))
    ok = [e for e in estimates.values() if feasible(e, spec.constraints)[0]]
    pareto = front(ok, spec.objectives)
    shown = list(pareto)
    chosen_key = config_key(pick.config) if pick else None
    if chosen_key and chosen_key in estimates and estimates[chosen_key] not in shown:
        shown.append(estimates[chosen_key])
    params = list(spec.space)
    metrics = [o.metric for o in spec.objectives]
    o = spec.objectives[0]
    shown.sort(key=lambda e: e.mean(o.metric) or 0.0, reverse=o.direction == "maximize")
    conf = spec.pick.confidence
    if shown:
        on_front = {id(e) for e in pareto}
        spread = {m: relative_spread(estimates, m) for m in metrics}
        progress.say(
            f"\nPareto-optimal feasible configs by their pooled estimates ({len(on_front)}), "
            f"mean +- half the {int(conf * 100)}% interval:"
        )
        rows = []
        for e in shown:
            mark = "*" if e.key == chosen_key else ""
            cells = []
            for m in metrics:
                iv = e.interval(m, conf, spread[m])
                cells.append(f"{iv[0]:.4g} +-{(iv[2] - iv[1]) / 2:.2g}" if iv else "-")
            flags = [] if id(e) in on_front else ["chosen, off the front"]
            if e.under_load:
                flags.append(f"{e.under_load} block(s) under load left out")
            rows.append(
                [
                    f"{mark}#{e.first_trial}",
                    *[e.config.get(p, "-") for p in params],
                    e.n,
                    *cells,
                    "; ".join(flags),
                ]
            )
        progress.table(["trial", *params, "blocks", *metrics, "note"], rows)
    if pick is None:
        return
    if pick.remeasured:
        progress.say(f"\nthe race on {pick.rule} ({pick.rounds} rounds, blocks in fresh workers):")
        rows = []
        for c in pick.candidates:
            status = race_status(asdict(c), pick.winner, pick.tied_with)
            ci = f"{c.ci[0]:.4g}..{c.ci[1]:.4g}" if c.ci else "-"
            mean = f"{c.mean:.4g}" if c.mean is not None else "-"
            rows.append(
                [
                    f"#{c.trial}" if c.trial >= 0 else "-",
                    fmt_config(c.config),
                    f"{c.value:.4g}" if c.value == c.value else "-",
                    len(c.rounds),
                    mean,
                    ci,
                    status,
                ]
            )
        progress.table(["trial", "config", "before race", "rounds", "race mean", "interval", "status"], rows)
    chosen = pick.chosen
    ci = (
        f" (mean {chosen.mean:.4g}, {int(pick.confidence * 100)}% CI {chosen.ci[0]:.4g}..{chosen.ci[1]:.4g})"
        if chosen.ci and chosen.mean is not None
        else f" (pooled estimate {chosen.value:.4g} over {chosen.blocks} block(s))"
    )
    progress.say(f"\nchosen: trial #{pick.winner} {fmt_config(pick.config)} by {pick.rule}{ci}")
    progress.say(f"  {pick.reason}")
    if pick.baseline:
        progress.say(f"  baseline {fmt_config(pick.baseline.get('config', {}))}: {pick.baseline['text']}")


__all__ = ["Candidate", "RunOutcome", "bench", "export", "report", "run"]
