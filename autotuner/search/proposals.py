"""What the driver does with a config the sampler proposes, so that no trial buys nothing.

- never measured: measure it (one block, counted in the budget);
- failed before (any class: a crash or a timeout is not retried on the budget): not run again,
  stored as a FAIL of the same class that costs nothing;
- measured, and still a contender (its interval reaches the leader's) with fewer than
  REPEATS blocks, or seen by a short first look only (measurement.first_look_s): measure it
  again at full length, deliberately (counted);
- measured otherwise: tell the sampler the config's pooled estimate at no cost (free);
- after a few free trials in a row (the sampler is stuck on what it knows), the driver draws an
  unmeasured runnable config itself and queues it, so the search cannot stall; when none is left,
  the space is exhausted and the search ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from autotuner.search.estimates import (
    Block,
    Estimate,
    config_key,
    feasible,
    is_measurement,
    reaches,
    relative_spread,
    trial_block,
)
from autotuner.search.pick import Rule
from autotuner.search.space import all_configs, neighbors, random_config
from autotuner.spec.schema import Spec
from autotuner.study import records as rec

# Knobs that change speed but not the numbers a model computes: a config that breaks an accuracy
# constraint breaks it at every value of these, with its other settings the same.
SPEED_ONLY = frozenset({"batch_size", "threads", "inter_op_threads", "execution_mode", "io_binding"})
# How far past its bound an accuracy constraint must be broken before the verdict is shared.
ACCURACY_MARGIN = 0.01


@dataclass
class Proposal:
    action: str  # "measure", "remeasure", "pooled" or "failed"
    estimate: Estimate | None = None
    failed: tuple[int, str, str] | None = None  # (trial, class, message) of the earlier failure


# Dynamic quantization takes its activation scales from each call's whole input tensor, so the
# batch changes the numbers (recorded: cosine 0.92 at batch 8 and 0.96 at 32 on the sessions
# landscape): for it the batch size is not speed-only.
BATCH_CHANGES_NUMBERS = frozenset({"int8-dynamic"})


def _accuracy_key(config: dict[str, Any]) -> str:
    keep_batch = config.get("precision") in BATCH_CHANGES_NUMBERS
    return config_key(
        {k: v for k, v in config.items() if k not in SPEED_ONLY or (keep_batch and k == "batch_size")}
    )


# A conditional pair's ridge against a single value's: a measured pair such as int8 at `all` is
# believed nearly as measured (tests/search/test_conditional_pairs.py: 30 of 30 seeds at 0.1).
COND_PAIR_SHRINK = 0.1


def _unordered(p: Any) -> bool:
    values = p.values() or []
    return not all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)


class Arms:
    """The configs measured so far, kept up to date as results arrive (one pass at the start)."""

    def __init__(self, spec: Spec, trials: list[FrozenTrial], repeats: int) -> None:
        self.spec = spec
        self.repeats = repeats
        self.estimates: dict[str, Estimate] = {}
        self.refused: set[str] = set()
        # Measured configs by their settings apart from speed-only knobs (predicted_infeasible).
        self._same_accuracy: dict[str, list[Estimate]] = {}
        self.failed: dict[str, tuple[int, str, str]] = {}
        self.seen: set[int] = set()
        rule = Rule.first_objective(spec)
        self.metric = rule.metric
        self.maximize = rule.direction == "max"
        self.update(trials)

    def update(self, trials: list[FrozenTrial]) -> None:
        """Take in the finished trials not seen yet (another driver sharing the study, too)."""

        for t in trials:
            if t.number in self.seen or not t.state.is_finished():
                continue
            self.seen.add(t.number)
            config = rec.trial_config(t)
            if is_measurement(t):
                block = trial_block(t)
                self.add(t.number, config, block.metrics, block.under_load, block.short)
                continue
            cls = rec.failure_class(t)
            if cls and cls not in ("interrupted", "under-load"):
                self.fail(t.number, config, cls, rec.failure_message(t))

    def add(
        self,
        number: int,
        config: dict[str, Any],
        metrics: dict[str, float],
        under_load: bool,
        short: bool = False,
    ) -> None:
        self.seen.add(number)
        k = config_key(config)
        e = self.estimates.get(k)
        if e is None:
            e = self.estimates[k] = Estimate(k, config)
            self._same_accuracy.setdefault(_accuracy_key(config), []).append(e)
        e.trials.append(number)
        e.blocks.append(Block(dict(metrics), under_load, short))

    def refuse(self, config: dict[str, Any]) -> None:
        self.refused.add(config_key(config))

    def fail(self, number: int, config: dict[str, Any], cls: str, message: str) -> None:
        self.seen.add(number)
        k = config_key(config)
        self.refused.add(k)
        self.failed.setdefault(k, (number, cls, message))

    def tried(self) -> int:
        """Distinct configs measured cleanly, refused or failed."""
        clean = {k for k, e in self.estimates.items() if e.has_clean}
        return len(clean | self.refused)

    def measured(self, config: dict[str, Any]) -> Estimate | None:
        """Its estimate, if the config has a clean block (one taken under load does not count)."""
        e = self.estimates.get(config_key(config))
        if e is None or not e.has_clean:
            return None
        return e if e.values(self.metric) else None

    def is_contender(self, e: Estimate) -> bool:
        conf = self.spec.pick.confidence
        rel = relative_spread(self.estimates, self.metric)
        ivs = []
        for x in self.estimates.values():
            if feasible(x, self.spec.constraints)[0]:
                iv = x.interval(self.metric, conf, rel)
                if iv is not None:
                    ivs.append(iv)
        mine = e.interval(self.metric, conf, rel)
        if not ivs or mine is None or not feasible(e, self.spec.constraints)[0]:
            return False
        lead = (max if self.maximize else min)(ivs, key=lambda iv: iv[0])
        return reaches(mine, lead, self.maximize)

    def propose(self, config: dict[str, Any]) -> Proposal:
        e = self.measured(config)
        before = self.failed.get(config_key(config))
        if e is None and before is not None:
            return Proposal("failed", failed=before)
        if e is None:
            return Proposal("measure")
        if (e.n < self.repeats or e.looked_only) and self.is_contender(e):
            return Proposal("remeasure", e)
        return Proposal("pooled", e)

    def promotes(self, config: dict[str, Any]) -> bool:
        """Whether a config seen by short first looks only may still win: its interval reaches
        the leader's, so it earns a trial-length block (successive halving's next rung)."""
        e = self.measured(config)
        return e is not None and e.looked_only and self.is_contender(e)

    def pooled_values(self, e: Estimate) -> list[float] | None:
        vals = [e.mean(o.metric) for o in self.spec.objectives]
        return None if any(v is None for v in vals) else [float(v) for v in vals]  # type: ignore[arg-type]

    def predicted_infeasible(self, config: dict[str, Any]) -> str | None:
        """Why the config cannot meet an accuracy constraint: a measured config with the same
        settings apart from speed-only knobs broke it clearly (batch size and threads do not
        change what the model computes)."""
        acc = [c for c in self.spec.constraints if c.metric.startswith("accuracy_")]
        if not acc:
            return None
        for e in self._same_accuracy.get(_accuracy_key(config), []):
            for c in acc:
                v = e.mean(c.metric)
                if v is not None and c.violation(v) > ACCURACY_MARGIN * max(abs(c.bound), 1e-9):
                    return (
                        f"trial #{e.first_trial} with the same settings but batch size / threads broke "
                        f"{c.text} ({c.metric}={v:.4g}); those knobs do not change accuracy"
                    )
        return None

    def leaders(self, k: int) -> list[Estimate]:
        """The k best feasible configs by their pooled estimate on the first objective."""
        scored = [
            e
            for e in self.estimates.values()
            if e.mean(self.metric) is not None and e.has_clean and feasible(e, self.spec.constraints)[0]
        ]
        scored.sort(key=lambda e: e.mean(self.metric) or 0.0, reverse=self.maximize)
        return scored[:k]

    def diverse_leaders(self, k: int) -> list[Estimate]:
        """The best configs, each at least two parameters away from the ones before it, so that
        refinement climbs several hills rather than one hill's slopes."""
        out: list[Estimate] = []
        for e in self.leaders(len(self.estimates)):
            if all(sum(1 for n in e.config if e.config.get(n) != o.config.get(n)) >= 2 for o in out):
                out.append(e)
            if len(out) == k:
                break
        return out

    def next_neighbor(self, runnable: Any, k: int = 3) -> dict[str, Any] | None:
        """An unmeasured, runnable neighbour of one of the k best diverse configs, taken in turn
        (the best's first neighbour, then the second's, ...)."""

        lists = [neighbors(self.spec, e.config) for e in self.diverse_leaders(k)]
        self.turn = getattr(self, "turn", -1) + 1
        order = [lists[(self.turn + i) % len(lists)] for i in range(len(lists))] if lists else []
        return self.first_runnable((c for cands in order for c in cands), runnable)

    def refinement(self, runnable: Any) -> dict[str, Any] | None:
        """The reserve's next config, by turns: the model's best unmeasured config
        (`surrogate_pick`), then an unmeasured neighbour of the leader (`polish_pick`). A polish
        turn with no step left takes the model's config; either turn with nothing from the model
        (an unbounded space) takes a neighbour of the diverse leaders. The model alone
        stops short of the best where a last knob is off by one value: on the semi-synthetic
        landscape (60 trials of 6,370 configs) most misses had the right corner with the batch
        next to the best, or the other execution mode (docs/benchmarks/synthetic_landscape.md)."""
        self.refine_turn = getattr(self, "refine_turn", 0) + 1
        model = self.surrogate_pick(runnable)  # also fits the model the polish orders by
        polish = self.polish_pick(runnable) if self.refine_turn % 2 == 0 else None
        return polish or model or self.next_neighbor(runnable)

    def polish_pick(self, runnable: Any) -> dict[str, Any] | None:
        """An unmeasured, runnable config one step from the leader (the best feasible pooled
        estimate), the one the additive model scores highest first. Where a step breaks an
        accuracy constraint (known or predicted), the steps from it that change another setting
        of the numbers are candidates too: per-tensor int8 may hold its accuracy only with the
        FFN layers kept in fp32, so per-channel with no layers kept is two steps from such a
        leader, through a config that fails."""
        lead = self.leaders(1)
        if not lead:
            return None
        here = lead[0].config
        steps = neighbors(self.spec, here)
        bridges = []
        for c in steps:
            e = self.estimates.get(config_key(c))
            broke = e is not None and e.has_clean and not feasible(e, self.spec.constraints)[0]
            if broke or self.predicted_infeasible(c):
                moved = {n for n in c if c.get(n) != here.get(n)} | SPEED_ONLY
                bridges += [
                    d for d in neighbors(self.spec, c) if not any(d.get(n) != c.get(n) for n in moved)
                ]
        cands = steps + bridges
        scores, space = getattr(self, "_scores", None), self._space()
        if scores is not None and space is not None:
            pos = self._pos
            cands.sort(key=lambda c: -float(scores[pos[k]]) if (k := config_key(c)) in pos else 0.0)
        return self.first_runnable(cands, runnable)

    def first_runnable(self, configs: Any, runnable: Any) -> dict[str, Any] | None:
        """The first config not measured, not refused, and accepted by `runnable`; the ones it
        refuses on the way are remembered as refused."""
        for c in configs:
            key = config_key(c)
            if key in self.estimates or key in self.refused:
                continue
            if runnable(c):
                return c
            self.refuse(c)
        return None

    def surrogate_pick(
        self, runnable: Any, ridge: float = 0.3, pair_ridge: float = 3.0
    ) -> dict[str, Any] | None:
        """The unmeasured runnable config a small additive model predicts best: ridge regression
        of log(rule metric) on one-hot values and pairs of values of the parameters, fitted to
        every measured config (finite spaces only; None where the space is unbounded).

        The model is fitted again once the measured configs have grown by 5% (every time below
        40 of them), and its ranking is reused in between: at 1000 configs a fit costs a quarter
        of a second, and one more measurement barely moves it."""

        space = self._space()
        rows = [
            (e.key, e.mean(self.metric))
            for e in self.estimates.values()
            if e.has_clean and (e.mean(self.metric) or 0) > 0 and e.key in self._pos
        ]
        if space is None or len(rows) < 4:
            return None
        every, keys, feat_ids, gid = space
        fit = getattr(self, "_fit", None)
        if fit is None or len(rows) - fit[0] >= max(1, fit[0] // 20):
            pad = len(gid)
            ids = feat_ids[[self._pos[k] for k, _ in rows]]
            present = np.unique(ids[ids != pad])
            col = np.full(pad + 1, -1)
            col[present] = np.arange(len(present))
            x = np.zeros((len(rows), len(present) + 1))
            r = np.repeat(np.arange(len(rows)), ids.shape[1])
            c = col[ids.ravel()]
            x[r[c >= 0], c[c >= 0]] = 1.0
            x[:, -1] = 1.0
            y = np.array([math.log(v) for _, v in rows])  # type: ignore[arg-type]
            sign = 1.0 if self.maximize else -1.0
            # Pairs are shrunk harder than single values: with few measurements a pair term should
            # explain only what the values alone cannot (else it soaks up main effects as noise).
            # A conditional parameter's pairs are not: its values are its values in context (the
            # graph level is int8's context), and what they hold is what the model must learn.
            shrink = np.where(self._is_pair[present], pair_ridge, ridge)
            shrink = np.where(self._cond_pair[present], ridge * COND_PAIR_SHRINK, shrink)
            penalty = np.diag(np.append(shrink, 0.0))
            w = np.linalg.solve(x.T @ x + penalty, x.T @ (sign * (y - y.mean())))
            # Every config scored at once: its features' weights summed (unseen ones weigh 0).
            wg = np.zeros(pad + 1)
            wg[present] = w[:-1]
            scores = wg[feat_ids].sum(axis=1)
            fit = self._fit = (len(rows), np.argsort(-scores, kind="stable").tolist())
            self._scores, self._bound = scores, self._pair_bounds(wg)
            self._cursor = 0
        untried = self._untried_pair(runnable)
        if untried is not None:
            return untried
        # Configs before the cursor are measured or refused, and stay so: skip them for good.
        order, cur = fit[1], self._cursor
        while cur < len(order) and (keys[order[cur]] in self.estimates or keys[order[cur]] in self.refused):
            cur += 1
        self._cursor = cur
        ranked = (
            every[order[i]]
            for i in range(cur, len(order))
            if keys[order[i]] not in self.estimates and keys[order[i]] not in self.refused
        )
        return self.first_runnable(ranked, runnable)

    def _untried_pair(self, runnable: Any) -> dict[str, Any] | None:
        """Before the model's ranking is trusted: an unmeasured runnable config holding a pair
        (a value of a parameter, a value of a conditional one) that no measured config holds,
        the most optimistic first: the model's score plus, for its best unseen pair, an upper
        bound instead of 0 (how far below its parameter's best the model puts the pair's value,
        `_pair_bounds`). A value that looks poor in one context (int8 at graph level basic) is so
        tried in another (int8 at all) before it is given up."""
        every, _, feat_ids, _ = self._space()  # type: ignore[misc]
        cond = self._cond_pair
        seen = np.zeros(len(cond), dtype=bool)
        for k, e in self.estimates.items():
            if e.has_clean and k in self._pos:
                seen[feat_ids[self._pos[k]]] = True
        unseen = cond & ~seen
        if not unseen.any():
            return None
        n_new = unseen[feat_ids].sum(axis=1)
        # The one pair that gives the most room, not their sum: a config is not made more
        # promising by holding more unseen pairs (batch 1 with `all` too, say).
        optimistic = self._scores + np.where(unseen, self._bound, 0.0)[feat_ids].max(axis=1)
        for i in np.argsort(-optimistic, kind="stable"):
            if n_new[i] == 0:
                continue
            c = self.first_runnable([every[i]], runnable)
            if c is not None:
                return c
        return None

    def _conditional_pair(self, feature: str) -> bool:
        """Whether a feature pairs a conditional parameter's value with a value of an unordered
        parameter (precision, backend: numbers such as batch size are walked by the neighbours)."""
        if "&" not in feature:
            return False
        names = [side.split("=", 1)[0] for side in feature.split("&")]
        cond = [n for n in names if self.spec.space[n].when]
        other = [n for n in names if n not in cond]
        return bool(cond) and all(_unordered(self.spec.space[n]) for n in other)

    def _pair_bounds(self, wg: Any) -> Any:
        """Per pair feature (a value, a conditional parameter's value): how far below the best
        value of its parameter the model puts that value (its main effect's weight against the
        largest of its parameter's). An unseen pair is scored as if it lifted the value that far:
        the more a value looks poor where it was measured, the more room the pair is given."""
        gid = self._space()[3]  # type: ignore[index]
        cond = {n for n, p in self.spec.space.items() if p.when}
        main = {f: float(wg[i]) for f, i in gid.items() if "&" not in f}
        best: dict[str, float] = {}
        for f, x in main.items():
            name = f.split("=", 1)[0]
            best[name] = max(best.get(name, x), x)
        lift = np.zeros(len(gid) + 1)
        for f, i in gid.items():
            if "&" not in f:
                continue
            sides = [x for x in f.split("&") if x.split("=", 1)[0] not in cond]
            lift[i] = sum(best[x.split("=", 1)[0]] - main[x] for x in sides if x in main)
        return lift

    def _feats(self, c: dict[str, Any]) -> list[str]:
        ones = [f"{k}={c[k]!r}" for k in sorted(c) if self.spec.space[k].type != "fixed"]
        return ones + [f"{a}&{b}" for a, b in combinations(ones, 2)]

    def _space(self) -> tuple[list[dict[str, Any]], list[str], Any, dict[str, int]] | None:
        """Every config of a finite space with its key and feature ids, computed once (the
        refinement phase asks for them on every trial)."""
        if not hasattr(self, "_every"):
            self._pos: dict[str, int] = {}

            every = all_configs(self.spec)
            if every is None:
                self._every = None
            else:
                gid: dict[str, int] = {}
                lists = [[gid.setdefault(f, len(gid)) for f in self._feats(c)] for c in every]
                width = max((len(ids) for ids in lists), default=0)
                pad = len(gid)  # a column whose weight stays 0
                feat_ids = np.array([ids + [pad] * (width - len(ids)) for ids in lists], dtype=np.int64)
                keys = [config_key(c) for c in every]
                self._every = (every, keys, feat_ids, gid)
                self._pos = {k: i for i, k in enumerate(keys)}
                self._is_pair = np.array(["&" in f for f in gid] + [False])
                self._cond_pair = np.array([self._conditional_pair(f) for f in gid] + [False])
        return self._every

    def unmeasured(self, rng: random.Random, runnable: Any, tries: int = 200) -> dict[str, Any] | None:
        """An unmeasured config that `runnable(config)` accepts, drawn at random; None if none is left."""
        space = self._space()
        if space is not None:
            every, keys = space[0], space[1]
            pool_ = [
                c
                for c, k in zip(every, keys, strict=True)
                if k not in self.estimates and k not in self.refused
            ]
            rng.shuffle(pool_)
            return self.first_runnable(pool_, runnable)
        return self.first_runnable((random_config(self.spec, rng) for _ in range(tries)), runnable)
