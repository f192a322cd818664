"""The race: re-measure the contenders in interleaved rounds until one leads with confidence.

Contenders are the feasible configs whose interval still overlaps the leader's (capped by
pick.top_k). Each round measures every contender still in the race once, in an order that
rotates each round, each block in a fresh worker process (so the rounds hold the variation
between processes). After `pick.rounds` rounds, a contender beaten with confidence is dropped, and
the race stops once one is left, the rest are ties within the tolerance, or `pick.max_rounds` /
`pick.time_s` runs out. The spec's baseline runs in the same rounds, so the gain over it is a
paired, same-conditions figure. A block under foreign load is measured again.

Blocks run one at a time on every executor: `measure` returns when its block has ended, with its
worker process and the GPU memory it held, so no two contenders are loaded at once (a Ray block
asks for the GPUs its config holds, like the config's trial).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from autotuner.measure.load import over_limit
from autotuner.result import TrialResult
from autotuner.search.estimates import Estimate, config_key, feasible, reaches, relative_spread
from autotuner.search.pick import Candidate, Rule, race_mean, settle
from autotuner.spec.schema import Spec

MeasureBlock = Callable[[dict[str, Any]], TrialResult]
OnBlock = Callable[[Candidate, int, TrialResult, bool], None]


def contenders(spec: Spec, estimates: dict[str, Estimate], rule: Rule) -> list[Candidate]:
    """Feasible configs whose interval on the rule reaches the leader's, best first, capped."""
    conf = spec.pick.confidence
    rel = relative_spread(estimates, rule.metric)
    scored: list[tuple[Estimate, tuple[float, float, float]]] = []
    for e in estimates.values():
        iv = e.interval(rule.metric, conf, rel)
        if iv is not None and feasible(e, spec.constraints)[0]:
            scored.append((e, iv))
    scored.sort(key=lambda x: rule.key(x[1][0]))
    lead = scored[0][1] if scored else None
    reaching = [(e, iv) for e, iv in scored if lead and reaches(iv, lead, rule.direction == "max")]
    return [
        Candidate(trial=e.first_trial, config=e.config, value=iv[0], blocks=e.n)
        for e, iv in reaching[: spec.pick.top_k]
    ]


def run_race(
    spec: Spec,
    rule: Rule,
    cands: list[Candidate],
    measure: MeasureBlock,
    on_block: OnBlock,
    say: Callable[[str], None],
    constraint_check: Callable[[Candidate], str | None] | None = None,
) -> int:
    """Race the candidates (and a baseline among them, flagged). Returns the rounds run."""
    p = spec.pick
    limit = spec.measurement.max_foreign_load
    started = time.monotonic()
    rounds = 0
    for r in range(p.max_rounds):
        active = [c for c in cands if c.dropped is None and c.error is None]
        if not [c for c in active if not c.baseline]:
            break
        k = r % len(active)
        for c in active[k:] + active[:k]:
            res = measure(c.config)
            tries = 0
            while res.ok and over_limit(res.metrics, limit) and tries < spec.measurement.load_repeats:
                on_block(c, r, res, True)
                say(
                    f"  round {r + 1}: trial #{c.trial} measured under foreign load "
                    f"({res.metrics.get('foreign_load', 0):.2f} cores); measuring again"
                )
                res = measure(c.config)
                tries += 1
            if not res.ok:
                c.error = f"{res.failure_class}: {res.failure_message}"
                c.dropped = f"failed in round {r + 1}: {c.error}"
                continue
            on_block(c, r, res, over_limit(res.metrics, limit))
            c.round_metrics.append(dict(res.metrics))
            v = res.metrics.get(rule.metric)
            c.rounds.append(float(v) if v is not None else float("nan"))
        rounds = r + 1
        line = ", ".join(
            f"{'baseline' if c.baseline else f'#{c.trial}'} {race_mean(c, rule.metric) or float('nan'):.4g}"
            for c in cands
            if c.dropped is None
        )
        say(f"  round {rounds}: mean {rule.metric} so far: {line}")
        if rounds < max(p.rounds, 2):
            continue
        racing = [c for c in cands if c.dropped is None and c.error is None and not c.baseline]
        if constraint_check is not None:
            for c in racing:
                why = constraint_check(c)
                if why:
                    c.dropped = f"breaks a constraint on the re-measured numbers: {why}"
                    say(f"  trial #{c.trial} leaves the race: {c.dropped}")
            racing = [c for c in racing if c.dropped is None]
        looks = p.max_rounds - max(p.rounds, 2) + 1
        done = settle(racing, rule, p.confidence, p.tie_tolerance, looks)
        for c in racing:  # every one of them was in the race until settle
            if c.dropped:
                say(f"  trial #{c.trial} leaves the race: {c.dropped}")
        if done:
            break
        if p.time_s is not None and time.monotonic() - started > p.time_s:
            say(f"  the race's time budget ({p.time_s:g} s) is spent")
            break
    return rounds


def race_block_record(c: Candidate, r: int, res: TrialResult, under_load: bool) -> dict[str, Any]:
    return {
        "key": config_key(c.config),
        "config": c.config,
        "trial": c.trial,
        "round": r,
        "baseline": c.baseline,
        "under_load": under_load,
        "metrics": {k: v for k, v in res.metrics.items() if v == v},
    }
