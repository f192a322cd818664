"""Choosing the winner with noise in mind: pure statistics over the race's interleaved rounds.

Each contender has one value per race round (a block in a fresh process); rounds are paired, so
drift that hits every contender alike cancels in the differences. A contender is dropped once the
leader beats it with confidence; two contenders whose paired difference lies within the tie
tolerance are a tie. Tie-break rules decide only where they too separate the tied configs beyond
noise; otherwise the best mean on the rule stands.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from autotuner.metrics import is_number
from autotuner.search.stats import mean_ci, paired_difference


@dataclass
class Rule:
    direction: str  # "min" or "max"
    metric: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        d, _, m = text.partition(":")
        return cls(d, m)

    @classmethod
    def first_objective(cls, spec: Any) -> Rule:
        """The default rule: the spec's first objective, in its direction."""
        o = spec.objectives[0]
        return cls("max" if o.direction == "maximize" else "min", o.metric)

    def __str__(self) -> str:
        return f"{self.direction}:{self.metric}"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "max" else a < b

    def key(self, value: float) -> float:
        return -value if self.direction == "max" else value


@dataclass
class Candidate:
    trial: int  # the first trial that measured the config
    config: dict[str, Any]
    value: float  # the rule metric's pooled estimate before the race
    blocks: int = 1  # blocks pooled into `value`
    rounds: list[float] = field(default_factory=list)  # the rule metric, one value per race round
    round_metrics: list[dict[str, float]] = field(default_factory=list)
    mean: float | None = None  # over the race rounds
    ci: tuple[float, float] | None = None
    dropped: str | None = None  # why it left the race
    error: str | None = None
    baseline: bool = False  # raced only to state the gain over the baseline


@dataclass
class Pick:
    rule: str
    tie_break: list[str]
    confidence: float
    winner: int
    candidates: list[Candidate]
    tied_with: list[int]
    reason: str
    remeasured: bool
    config: dict[str, Any] = field(default_factory=dict)
    rounds: int = 0
    baseline: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @property
    def chosen(self) -> Candidate:
        return next(c for c in self.candidates if c.trial == self.winner and not c.baseline)


def race_status(c: dict[str, Any], winner: int, tied_with: list[int]) -> str:
    """What became of a raced candidate (a Candidate as a dict): baseline, chosen, tie, or why it left."""
    if c.get("baseline"):
        return "baseline"
    if c["trial"] == winner:
        return "chosen"
    if c["trial"] in tied_with:
        return "tie"
    return c.get("dropped") or c.get("error") or "-"


def metric_series(c: Candidate, metric: str) -> list[float | None]:
    return [r.get(metric) if is_number(r.get(metric)) else None for r in c.round_metrics]


def paired(a: Candidate, b: Candidate, metric: str) -> tuple[list[float], list[float]]:
    """Values of both candidates in the rounds where both were measured."""
    xs, ys = [], []
    for x, y in zip(metric_series(a, metric), metric_series(b, metric), strict=False):
        if x is not None and y is not None:
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def beats(a: Candidate, b: Candidate, rule: Rule, confidence: float, tolerance: float = 0.0) -> bool:
    """a is better than b on the rule with confidence (and by more than `tolerance` of a's mean)."""
    xs, ys = paired(a, b, rule.metric)
    if len(xs) < 2:
        return False
    m, lo, hi = paired_difference(xs, ys, confidence)
    margin = tolerance * abs(sum(xs) / len(xs))
    if rule.direction == "max":
        return lo > 0 and m > margin
    return hi < 0 and -m > margin


def equivalent(a: Candidate, b: Candidate, rule: Rule, confidence: float, tolerance: float) -> bool:
    """The paired interval of the difference lies inside +-tolerance of a's mean: a tie for sure."""
    xs, ys = paired(a, b, rule.metric)
    if len(xs) < 2:
        return False
    _, lo, hi = paired_difference(xs, ys, confidence)
    bound = tolerance * abs(sum(xs) / len(xs))
    return -bound <= lo and hi <= bound


def race_mean(c: Candidate, metric: str) -> float | None:
    vs = [v for v in metric_series(c, metric) if v is not None]
    return sum(vs) / len(vs) if vs else None


def leader(cands: list[Candidate], rule: Rule) -> Candidate | None:
    scored = [c for c in cands if race_mean(c, rule.metric) is not None]
    if not scored:
        return None
    return min(scored, key=lambda c: rule.key(race_mean(c, rule.metric) or 0.0))


def settle(active: list[Candidate], rule: Rule, confidence: float, tolerance: float, looks: int = 1) -> bool:
    """Drop the contenders the leader beats with confidence. True when the race can stop: one
    contender left, or every other is a tie for sure.

    The race looks at its data after every round, so each look tests at the confidence split
    over the `looks` it may take (Bonferroni): two identical configs then stay a tie with the
    stated confidence over the whole race, not only at one look.
    """
    best = leader(active, rule)
    if best is None:
        return True
    strict = 1 - (1 - confidence) / max(1, looks)
    for c in active:
        if c is not best and c.dropped is None and beats(best, c, rule, strict):
            n = len(paired(best, c, rule.metric)[0])
            c.dropped = (
                f"beaten by trial #{best.trial} with {int(confidence * 100)}% confidence after {n} rounds"
            )
    left = [c for c in active if c.dropped is None]
    return len(left) <= 1 or all(
        equivalent(best, c, rule, confidence, tolerance) for c in left if c is not best
    )


def pick_winner(
    cands: list[Candidate],
    rule: Rule,
    tie_breaks: list[Rule],
    confidence: float,
    tolerance: float,
) -> Pick:
    """The winner among the contenders that finished the race (baseline excluded)."""
    pct = int(confidence * 100)
    contenders = [c for c in cands if not c.baseline]
    for c in cands:  # the baseline's race figures are shown beside the contenders'
        if len(c.rounds) >= 2:
            m, lo, hi = mean_ci(c.rounds, confidence)
            c.mean, c.ci = m, (lo, hi)
    raced = [c for c in contenders if c.dropped is None and c.error is None and len(c.rounds) >= 2]
    tb = [str(t) for t in tie_breaks]
    if not raced:
        best = contenders[0]
        why = "no race" if not any(c.rounds for c in contenders) else "no contender finished the race"
        return Pick(
            str(rule),
            tb,
            confidence,
            best.trial,
            cands,
            [],
            f"best pooled estimate of {rule} over {best.blocks} block(s) ({why})",
            remeasured=False,
            config=best.config,
        )
    best = leader(raced, rule)
    assert best is not None
    n = len(best.rounds)
    tied = [c for c in raced if c is not best and not beats(best, c, rule, confidence, 0.0)]
    if not tied:
        reason = (
            f"best {rule} over {n} interleaved rounds; every other contender beaten with {pct}% confidence"
        )
        others = [c for c in contenders if c is not best]
        if not others:
            reason = f"the only contender for {rule} ({n} interleaved rounds)"
        return Pick(str(rule), tb, confidence, best.trial, cands, [], reason, True, best.config, n)
    group = [best, *tied]
    names = ", ".join("#" + str(c.trial) for c in group)
    for t in tie_breaks:
        for c in group:
            if all(beats(c, o, t, confidence, tolerance) for o in group if o is not c):
                reason = (
                    f"trials {names} tie on {rule} (paired {pct}% interval of the difference includes 0); "
                    f"#{c.trial} is better on {t} beyond the noise (more than {tolerance:.0%})"
                )
                return Pick(
                    str(rule),
                    tb,
                    confidence,
                    c.trial,
                    cands,
                    [o.trial for o in group if o is not c],
                    reason,
                    True,
                    c.config,
                    n,
                )
    reason = (
        f"trials {names} tie on {rule} (paired {pct}% interval of the difference includes 0); "
        f"no tie-break ({', '.join(tb) or 'none'}) separates them beyond the noise, so the best mean "
        f"on {rule} stands"
    )
    return Pick(
        str(rule), tb, confidence, best.trial, cands, [c.trial for c in tied], reason, True, best.config, n
    )


def baseline_gain(winner: Candidate, base: Candidate, rule: Rule, confidence: float) -> dict[str, Any]:
    """winner / baseline on the rule metric, from the rounds where both were measured side by side."""
    xs, ys = paired(winner, base, rule.metric)
    if len(xs) < 2 or any(y == 0 for y in ys):
        return {
            "config": base.config,
            "text": "the baseline could not be measured beside the winner",
            "significant": False,
        }
    ratios = [x / y for x, y in zip(xs, ys, strict=True)]
    m, lo, hi = mean_ci(ratios, confidence)
    better = lo > 1 if rule.direction == "max" else hi < 1
    pct = int(confidence * 100)
    text = f"{rule.metric} x{m:.3g} of the baseline ({pct}% CI x{lo:.3g}..x{hi:.3g}, {len(xs)} paired rounds)"
    if not better:
        text = f"no significant gain over the baseline: {text}"
    return {
        "config": base.config,
        "ratio": round(m, 4),
        "ci": [round(lo, 4), round(hi, 4)],
        "rounds": len(xs),
        "significant": better,
        "text": text,
    }
