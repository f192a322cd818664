"""The console summary at the end of a run: the front of pooled estimates, the race, the choice."""

from __future__ import annotations

import math
from dataclasses import asdict

import optuna

from autotuner.metrics import label
from autotuner.progress import Progress, fmt_config
from autotuner.search.estimates import (
    DEFAULT_REL_SD,
    Estimate,
    config_key,
    feasible,
    front,
    pool,
    relative_spread,
    spread_evidence,
)
from autotuner.search.pick import Pick, Rule, race_status
from autotuner.search.stats import t_quantile
from autotuner.spec.schema import Spec
from autotuner.study import records as rec


def summary(spec: Spec, study: optuna.Study, pick: Pick | None, progress: Progress) -> None:
    """The front of the configs' pooled estimates, the race side by side, and the choice."""

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
        headers = [label(m, spec.declared_metrics) for m in metrics]
        progress.table(["trial", *params, "blocks", *headers, "note"], rows)
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
    progress.say(f"  {noise_line(estimates, Rule.parse(pick.rule).metric, pick)}")


# A between-block spread above this is called out: the recorded landscapes of steady machines
# read 3-4% (tiny5, quickstart6); a 2-core VM whose blocks flip between fast and slow read 12%.
NOISY_SPREAD = 0.10


def resolvable(spread: float, blocks: int, confidence: float) -> float:
    """The smallest relative difference two configs measured `blocks` times each can be told
    apart by at this between-block spread (sd of log values): the half-width of the interval
    of the difference of two means of independent blocks. The race pairs its rounds, which
    does better where the drift hits both configs alike."""
    return math.expm1(t_quantile(confidence, 2 * blocks - 2) * spread * math.sqrt(2 / blocks))


def noise_line(estimates: dict[str, Estimate], metric: str, pick: Pick | None = None) -> str:
    """How much one config's blocks vary in this study (the pooled spread as measured; the
    intervals above shrink it toward DEFAULT_REL_SD while few configs repeat), and, when it is
    high, what that means for the pick: how far apart two configs must be to be told apart with
    as many blocks as the chosen one had."""
    ss, df, n = spread_evidence(estimates, metric)
    if df < 2:
        return (
            f"noise: too few configs measured twice to tell the between-block spread of {metric}; "
            f"intervals assume {DEFAULT_REL_SD:.0%}"
        )
    spread = (ss / df) ** 0.5
    line = (
        f"noise: one config's blocks of {metric} vary by {spread:.0%} (between-block spread over "
        f"{n} configs measured twice or more)"
    )
    if spread > NOISY_SPREAD:
        close = "configs this close to the chosen one may be as good"
        if pick is not None:
            blocks = max(len(pick.chosen.rounds), 2) if pick.remeasured else max(pick.chosen.blocks, 2)
            d = resolvable(spread, blocks, pick.confidence)
            close = (
                f"with {blocks} blocks each, two configs must differ by about {d:.0%} to be told apart "
                "(unpaired; the race's paired rounds do better where the drift hits both alike), so "
                "configs that close to the chosen one may be as good"
            )
        line += (
            f"; that is high: {close}, and the machine's state changing between blocks is the likely "
            "cause (longer blocks do not remove it; more interleaved rounds, pick.rounds and "
            "pick.max_rounds, average it out)"
        )
    return line


WALL_ATTR = "wall_breakdown"  # the study attribute the last run's breakdown is kept in
WALL_PARTS = (
    ("start-up", "worker_startup_s"),
    ("setup", "setup_s"),
    ("warm-up", "warmup_s"),
    ("timed", "measure_s"),
)


def wall_breakdown(study: optuna.Study, wall_s: float | None = None) -> dict[str, float]:
    """Where a run's wall time went, in seconds: every block's start-up, setup, warm-up and timed
    seconds summed over the search trials and the race blocks; `driver` is the rest of `wall_s`
    (search, storage, the race's bookkeeping, the report), when it is given."""
    per_block = [rec.metrics(t) for t in study.get_trials(deepcopy=False)]
    per_block += [dict(b.get("metrics") or {}) for b in rec.race_blocks(study)]
    out = {part: sum(float(m.get(name) or 0.0) for m in per_block) for part, name in WALL_PARTS}
    if wall_s is not None:
        out["driver"] = max(0.0, wall_s - sum(out.values()))
        out["wall"] = wall_s
    return out


def say_wall(study: optuna.Study, wall_s: float, progress: Progress) -> dict[str, float]:
    """The end-of-run line of where the wall time went."""
    parts = wall_breakdown(study, wall_s)
    shown = ", ".join(f"{k} {parts[k]:.1f} s" for k in (*(p for p, _ in WALL_PARTS), "driver"))
    progress.say(f"wall time {wall_s:.1f} s: {shown}")
    return parts
