"""What the driver does with a config the sampler proposes, so that no trial buys nothing.

- never measured: measure it (one block, counted in the budget);
- measured, and still a contender (its interval reaches the leader's) with fewer than
  REPEATS blocks: measure it again, deliberately (counted);
- measured otherwise: tell the sampler the config's pooled estimate at no cost (free);
- after a few free trials in a row (the sampler is stuck on what it knows), the driver draws an
  unmeasured runnable config itself and queues it, so the search cannot stall; when none is left,
  the space is exhausted and the search ends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial

from autotuner.estimates import Block, Estimate, config_key, feasible, pool, relative_spread
from autotuner.space import all_configs, random_config
from autotuner.spec import Spec


@dataclass
class Proposal:
    action: str  # "measure", "remeasure" or "pooled"
    estimate: Estimate | None = None


class Arms:
    """The configs measured so far, kept up to date as results arrive (one pass at the start)."""

    def __init__(self, spec: Spec, trials: list[FrozenTrial], repeats: int) -> None:
        self.spec = spec
        self.repeats = repeats
        self.estimates = pool(trials)
        self.refused: set[str] = {
            config_key(dict(t.user_attrs.get("config", {})))
            for t in trials
            if t.user_attrs.get("failure_class") in ("unsupported", "predicted-oom", "oom")
        }
        o = spec.objectives[0]
        self.metric = o.metric
        self.maximize = o.direction == "maximize"

    def add(self, number: int, config: dict[str, Any], metrics: dict[str, float], under_load: bool) -> None:
        k = config_key(config)
        e = self.estimates.setdefault(k, Estimate(k, config))
        e.trials.append(number)
        e.blocks.append(Block(f"trial #{number}", dict(metrics), under_load))

    def refuse(self, config: dict[str, Any]) -> None:
        self.refused.add(config_key(config))

    def measured(self, config: dict[str, Any]) -> Estimate | None:
        """Its estimate, if the config has a clean block (one taken under load does not count)."""
        e = self.estimates.get(config_key(config))
        if e is None or not any(not b.under_load for b in e.blocks):
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
        if self.maximize:
            lead = max(ivs, key=lambda iv: iv[0])
            return mine[2] >= lead[1]
        lead = min(ivs, key=lambda iv: iv[0])
        return mine[1] <= lead[2]

    def propose(self, config: dict[str, Any]) -> Proposal:
        e = self.measured(config)
        if e is None:
            return Proposal("measure")
        if e.n < self.repeats and self.is_contender(e):
            return Proposal("remeasure", e)
        return Proposal("pooled", e)

    def pooled_values(self, e: Estimate) -> list[float] | None:
        vals = [e.mean(o.metric) for o in self.spec.objectives]
        return None if any(v is None for v in vals) else [float(v) for v in vals]  # type: ignore[arg-type]

    def unmeasured(self, rng: random.Random, runnable: Any, tries: int = 200) -> dict[str, Any] | None:
        """An unmeasured config that `runnable(config)` accepts, drawn at random; None if none is left."""
        every = all_configs(self.spec)
        if every is not None:
            pool_ = [
                c for c in every if config_key(c) not in self.estimates and config_key(c) not in self.refused
            ]
            rng.shuffle(pool_)
            for c in pool_:
                if runnable(c):
                    return c
                self.refuse(c)
            return None
        for _ in range(tries):
            c = random_config(self.spec, rng)
            k = config_key(c)
            if k in self.estimates or k in self.refused:
                continue
            if runnable(c):
                return c
            self.refuse(c)
        return None
