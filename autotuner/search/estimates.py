"""Configs as arms: every measurement block of a config pools into one estimate with an interval.

A block is one independent measurement of a config in a fresh worker process: a search trial, a
deliberate repeat, or a round of the race. A config's value is the mean of its clean blocks (those
not taken under foreign load), and its interval is a t-interval over those block values, so it
holds the variation between processes, which is what the next run sees. A config measured once
gets an interval from the noise of the whole study (the pooled between-block spread of every
config measured more than once), never a zero-width one.

What is stored (a trial's config, metrics and flags; the study's race blocks) is read through
`autotuner.study.records`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from autotuner.metrics import is_number
from autotuner.search.stats import normal_quantile, t_quantile
from autotuner.spec.schema import config_key
from autotuner.study import records as rec
from autotuner.study.records import race_blocks, trial_config

__all__ = ["config_key", "race_blocks", "trial_config"]
# Failures known without launching: stored PRUNED and infeasible, and free.
NOT_LAUNCHED = ("unsupported", "predicted-oom", "predicted-infeasible")
DEFAULT_REL_SD = 0.10  # the between-process spread assumed before a study has seen any repeat
# The study's pooled spread counts as this many degrees of freedom beside a config's own blocks
# (the same weight relative_spread gives its prior).
PRIOR_DF = 4


def is_measurement(t: FrozenTrial) -> bool:
    """A trial that measured its config: COMPLETE (not a repeat told the pooled value), or a
    block taken under foreign load (FAIL under-load, its metrics kept)."""
    if t.state == TrialState.FAIL:
        return rec.failure_class(t) == "under-load"
    return t.state == TrialState.COMPLETE and rec.pooled_from(t) is None


@dataclass
class Block:
    metrics: dict[str, float]
    under_load: bool = False
    short: bool = False  # a first look (measurement.first_look_s), not a trial-length block


def trial_block(t: FrozenTrial) -> Block:
    """A measuring trial as a block: its numeric metrics, whether it ran under foreign load
    (flagged, or stored as FAIL under-load), and whether it was a short first look."""
    return Block(rec.metrics(t), rec.under_load(t) or t.state == TrialState.FAIL, rec.is_first_look(t))


@dataclass
class Estimate:
    key: str
    config: dict[str, Any]
    trials: list[int] = field(default_factory=list)  # trial numbers that measured it
    blocks: list[Block] = field(default_factory=list)

    @property
    def first_trial(self) -> int:
        return self.trials[0] if self.trials else -1

    @property
    def has_clean(self) -> bool:
        """At least one block no other process disturbed."""
        return any(not b.under_load for b in self.blocks)

    @property
    def looked_only(self) -> bool:
        """Measured by short first looks only: no trial-length block yet."""
        return bool(self.blocks) and all(b.short for b in self.blocks)

    def clean(self) -> list[Block]:
        ok = [b for b in self.blocks if not b.under_load]
        return ok or self.blocks

    def values(self, metric: str) -> list[float]:
        return [float(b.metrics[metric]) for b in self.clean() if is_number(b.metrics.get(metric))]

    @property
    def n(self) -> int:
        return len(self.clean())

    @property
    def under_load(self) -> int:
        return sum(1 for b in self.blocks if b.under_load)

    @property
    def measure_s(self) -> float:
        return sum(float(b.metrics.get("measure_s") or 0.0) for b in self.blocks)

    def mean(self, metric: str) -> float | None:
        vs = self.values(metric)
        if not vs:
            # Accuracy is measured by trials only; fall back to every block that has the metric.
            vs = [float(b.metrics[metric]) for b in self.blocks if is_number(b.metrics.get(metric))]
        return sum(vs) / len(vs) if vs else None

    def interval(self, metric: str, confidence: float, rel_sd: float) -> tuple[float, float, float] | None:
        """(mean, low, high). One block: the study's pooled relative spread stands in for its own."""
        vs = self.values(metric)
        if not vs:
            return None
        if len(vs) >= 2:
            # The config's own spread, pooled with the study's (worth PRIOR_DF degrees of
            # freedom): two blocks alone give a t interval on one degree of freedom (t = 12.7 at
            # 95%), so a config measured twice would look far less certain than one measured
            # once; with the study's noise beside its own it looks as certain as its blocks say.
            n = len(vs)
            m = statistics.fmean(vs)
            own = statistics.stdev(vs) / abs(m) if m else 0.0
            rel = math.sqrt(((n - 1) * own**2 + PRIOR_DF * rel_sd**2) / (n - 1 + PRIOR_DF))
            half = t_quantile(confidence, n - 1 + PRIOR_DF) * abs(m) * rel / math.sqrt(n)
            # Never narrower than what the study's noise allows for this many blocks.
            half = max(half, _half(m, rel_sd, n, confidence) * 0.5)
            return m, m - half, m + half
        m = vs[0]
        half = _half(m, rel_sd, 1, confidence)
        return m, m - half, m + half


def _half(mean: float, rel_sd: float, n: int, confidence: float) -> float:
    """Half-width of an interval whose spread is rel_sd of the mean (normal quantile)."""
    z = normal_quantile(confidence)
    return z * abs(mean) * rel_sd / math.sqrt(n)


def _r(v: float) -> float:
    return float(f"{v:.6g}")


def pool(trials: list[FrozenTrial], race_blocks: list[dict[str, Any]] | None = None) -> dict[str, Estimate]:
    """Every config's estimate, from its measuring trials and its race blocks."""
    out: dict[str, Estimate] = {}
    for t in trials:
        if not is_measurement(t):
            continue
        cfg = trial_config(t)
        k = config_key(cfg)
        e = out.setdefault(k, Estimate(k, cfg))
        e.trials.append(t.number)
        e.blocks.append(trial_block(t))
    for b in race_blocks or []:
        e = out.setdefault(b["key"], Estimate(b["key"], dict(b["config"])))
        metrics = {m: float(v) for m, v in b["metrics"].items() if is_number(v)}
        e.blocks.append(Block(metrics, bool(b.get("under_load"))))
    return out


def spread_evidence(estimates: dict[str, Estimate], metric: str) -> tuple[float, int, int]:
    """(sum of squares of log block values about each config's mean, degrees of freedom, configs)
    over every config measured at least twice: what relative_spread pools."""
    ss, df, n = 0.0, 0, 0
    for e in estimates.values():
        vs = [v for v in e.values(metric) if v > 0]
        if len(vs) < 2:
            continue
        logs = [math.log(v) for v in vs]
        mu = sum(logs) / len(logs)
        ss += sum((x - mu) ** 2 for x in logs)
        df += len(logs) - 1
        n += 1
    return ss, df, n


def relative_spread(estimates: dict[str, Estimate], metric: str) -> float:
    """The between-block spread of the study, relative to each config's mean: the pooled standard
    deviation of log block values over every config measured at least twice."""
    ss, df, _ = spread_evidence(estimates, metric)
    if df < 2:
        return DEFAULT_REL_SD
    # Shrink toward the prior while the study has seen few repeats.
    w = df / (df + 4)
    return math.sqrt(w * ss / df + (1 - w) * DEFAULT_REL_SD**2)


def reaches(iv: tuple[float, float, float], lead: tuple[float, float, float], maximize: bool) -> bool:
    """Whether an interval (mean, low, high) reaches the leader's: the config may still be best."""
    return iv[2] >= lead[1] if maximize else iv[1] <= lead[2]


def feasible(e: Estimate, constraints: list[Any]) -> tuple[bool, str | None]:
    """Constraints checked on the pooled means (accuracy from the trials, speed from every block)."""
    for c in constraints:
        v = e.mean(c.metric)
        if v is None:
            return False, f"{c.metric} was not measured"
        if c.violation(v) > 0:
            return False, f"{c.text} is broken: {c.metric}={v:.4g}"
    return True, None


def front(estimates: list[Estimate], objectives: list[Any]) -> list[Estimate]:
    """Configs whose pooled means no other config dominates on every objective."""
    rows = []
    for e in estimates:
        vals = [e.mean(o.metric) for o in objectives]
        if any(v is None for v in vals):
            continue
        rows.append(
            (e, [(-v if o.direction == "maximize" else v) for v, o in zip(vals, objectives, strict=True)])
        )
    keep = []
    for e, a in rows:
        dominated = any(
            all(x <= y for x, y in zip(b, a, strict=True)) and any(x < y for x, y in zip(b, a, strict=True))
            for _, b in rows
        )
        if not dominated:
            keep.append(e)
    return keep


def trial_feasible(trial: FrozenTrial) -> bool:
    """A single trial's own constraints (Optuna's convention: <= 0 is feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


def trial_front(trials: list[FrozenTrial], directions: list[str]) -> list[FrozenTrial]:
    """Trials no other trial dominates (the report's per-trial scatter), first of each config."""

    if not trials:
        return []
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    losses = np.array([t.values for t in trials], dtype=float) * signs
    keep = []
    for i, row in enumerate(losses):
        dominated = np.any(np.all(losses <= row, axis=1) & np.any(losses < row, axis=1))
        if not dominated:
            keep.append(trials[i])
    seen: set[str] = set()
    out = []
    for t in sorted(keep, key=lambda t: t.number):
        k = config_key(trial_config(t))
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def uses_budget(t: FrozenTrial) -> bool:
    """The budget counts measurements: running or finished trials, except interrupted ones (they
    are retried), promotions after a first look (the look counted), refusals known before
    launch, repeats told the pooled value, blocks taken under foreign load that were measured
    again, and load levels measured on another trial's server (search.ladder: the budget counts
    server starts)."""
    if rec.is_promotion(t):
        return False  # it completes a first look's config, which the budget counted
    if t.state == TrialState.RUNNING:
        return True
    if not t.state.is_finished():
        return False
    failure = rec.failure_class(t)
    if failure in ("interrupted", "under-load"):
        return False
    if t.state == TrialState.PRUNED and failure in NOT_LAUNCHED:
        return False
    return (
        rec.pooled_from(t) is None and rec.failed_before(t) is None and rec.marker(t, rec.LADDER_OF) is None
    )


def counted(trials: list[FrozenTrial], memo: dict[int, bool] | None = None) -> int:
    """How many trials use the budget. With a memo, a finished trial is judged once (its verdict
    does not change), so a driver that counts every trial each time stays cheap at 1000s."""
    return sum(1 for t in trials if budget_use(t, memo))


def budget_use(t: FrozenTrial, memo: dict[int, bool] | None = None) -> bool:
    if memo is None or not t.state.is_finished():
        return uses_budget(t)
    v = memo.get(t.number)
    if v is None:
        v = memo[t.number] = uses_budget(t)
    return v
