"""Choosing the winner: candidates from the feasible front, measured again, ties named."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from autotuner.metrics import is_number
from autotuner.stats import mean_ci, paired_difference


@dataclass
class Rule:
    direction: str  # "min" or "max"
    metric: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        d, _, m = text.partition(":")
        return cls(d, m)

    def __str__(self) -> str:
        return f"{self.direction}:{self.metric}"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "max" else a < b

    def key(self, value: float) -> float:
        return -value if self.direction == "max" else value


@dataclass
class Candidate:
    trial: int
    config: dict[str, Any]
    value: float  # the rule metric as the trial measured it
    rounds: list[float] = field(default_factory=list)
    mean: float | None = None
    ci: tuple[float, float] | None = None
    error: str | None = None


@dataclass
class Pick:
    rule: str
    tie_break: str
    confidence: float
    winner: int
    candidates: list[Candidate]
    tied_with: list[int]
    reason: str
    remeasured: bool

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def pareto_front(trials: list[FrozenTrial], directions: list[str]) -> list[FrozenTrial]:
    """Non-dominated trials (all objectives), first of each config only."""
    if not trials:
        return []
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    losses = np.array([t.values for t in trials], dtype=float) * signs
    keep = []
    for i, row in enumerate(losses):
        # Dominated: another trial at least as good everywhere and better somewhere.
        dominated = np.any(np.all(losses <= row, axis=1) & np.any(losses < row, axis=1))
        if not dominated:
            keep.append(trials[i])
    seen: set[str] = set()
    out = []
    for t in sorted(keep, key=lambda t: t.number):
        k = config_key(t.user_attrs.get("config", t.params))
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def completed_feasible(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and feasible(t)]


def candidates(trials: list[FrozenTrial], directions: list[str], rule: Rule, top_k: int) -> list[Candidate]:
    pool = completed_feasible(trials)
    if len(directions) > 1:
        pool = pareto_front(pool, directions)
    scored = [t for t in pool if is_number(t.user_attrs.get(rule.metric))]
    seen: set[str] = set()
    out: list[Candidate] = []
    for t in sorted(scored, key=lambda t: rule.key(t.user_attrs[rule.metric])):
        config = t.user_attrs.get("config", t.params)
        k = config_key(config)
        if k in seen:
            continue
        seen.add(k)
        out.append(Candidate(trial=t.number, config=config, value=float(t.user_attrs[rule.metric])))
        if len(out) == top_k:
            break
    return out


def decide(
    cands: list[Candidate],
    rule: Rule,
    tie_break: Rule,
    confidence: float,
    trial_metrics: dict[int, dict[str, Any]],
) -> Pick:
    """The winner: best mean over the re-measured rounds; others inside the noise are ties."""
    measured = [c for c in cands if len(c.rounds) >= 2]
    for c in measured:
        m, lo, hi = mean_ci(c.rounds, confidence)
        c.mean, c.ci = m, (lo, hi)
    if not measured:
        best = cands[0]
        return Pick(
            str(rule),
            str(tie_break),
            confidence,
            best.trial,
            cands,
            [],
            "single measurement: no re-measured rounds to compare",
            remeasured=False,
        )
    best = min(measured, key=lambda c: rule.key(c.mean or 0.0))
    tied = []
    for c in measured:
        if c is best:
            continue
        n = min(len(c.rounds), len(best.rounds))
        _, lo, hi = paired_difference(best.rounds[:n], c.rounds[:n], confidence)
        if lo <= 0 <= hi:
            tied.append(c)
    pct = int(confidence * 100)
    if not tied:
        reason = (
            f"best {rule} over {len(best.rounds)} interleaved rounds; "
            f"no other candidate within the {pct}% interval"
        )
        return Pick(str(rule), str(tie_break), confidence, best.trial, cands, [], reason, True)
    group = [best, *tied]
    tb = [c for c in group if is_number(trial_metrics.get(c.trial, {}).get(tie_break.metric))]
    winner = min(tb, key=lambda c: tie_break.key(trial_metrics[c.trial][tie_break.metric])) if tb else best
    reason = (
        f"trials {', '.join('#' + str(c.trial) for c in group)} tie on {rule} "
        f"(paired {pct}% interval of the difference includes 0); broken by {tie_break}"
    )
    return Pick(
        str(rule),
        str(tie_break),
        confidence,
        winner.trial,
        cands,
        [c.trial for c in group if c is not winner],
        reason,
        True,
    )
