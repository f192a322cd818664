"""Selection: race the contenders in interleaved rounds (a fresh worker process per
block), then pick from the pooled estimates with noise in mind (`pick.pick_winner`)."""

from __future__ import annotations

from typing import Any

import optuna

from autotuner.errors import UsageError
from autotuner.execution.base import TrialRequest
from autotuner.progress import Progress
from autotuner.result import TrialResult
from autotuner.search.estimates import Block, Estimate, config_key, feasible, pool
from autotuner.search.pick import Candidate, Pick, Rule, baseline_gain, pick_winner
from autotuner.search.precheck import precheck
from autotuner.search.race import contenders, race_block_record, run_race
from autotuner.search.space import complete
from autotuner.spec.schema import Spec, check_rule
from autotuner.study import records as rec


def choose(
    spec: Spec, study: optuna.Study, rule_text: str | None, executor: Any, progress: Progress
) -> Pick | None:
    """Pick the winner from the configs' pooled estimates. With an executor, race the contenders
    first (interleaved rounds, a fresh process per block) and record the pick; without one, read
    the last race and write nothing."""
    rule = _rule(spec, rule_text)
    trials = study.get_trials(deepcopy=False)
    stored = rec.race_blocks(study)
    estimates = pool(trials, stored)
    cands = contenders(spec, estimates, rule)
    if not cands:
        progress.say("no feasible completed trial: nothing to pick (see failures above)")
        return None
    base_cfg = baseline_config(spec)
    base = _baseline(cands, estimates, rule, base_cfg)
    tie_breaks = [Rule.parse(t) for t in spec.pick.tie_break]
    racers = cands + ([base] if base is not None and base.baseline else [])
    if executor is not None and spec.pick.rounds >= 1 and (len(cands) > 1 or (base and base.baseline)):
        if base is not None and base.baseline and _refused(spec, base_cfg or {}, executor, trials):
            racers.remove(base)
            base = None
        race = _Race(spec, study, executor, estimates, stored)
        race.run(rule, cands, racers, base is not None and base.baseline, progress)
    elif stored:
        _replay_last_race(racers, stored, rule)
    pick = pick_winner(racers, rule, tie_breaks, spec.pick.confidence, spec.pick.tie_tolerance)
    if base is not None:
        pick.baseline = _against_baseline(spec, pick, base, rule)
    if executor is not None:
        # Only the run that raced records its choice: export and report read the study only,
        # so an export by another rule neither writes (a read-only database user can export)
        # nor replaces the run's choice that `show` and the report name.
        rec.save_pick(study, pick.to_dict())
    return pick


def _rule(spec: Spec, rule_text: str | None) -> Rule:
    """The pick's rule: as given (--pick, checked against the spec's metrics), else the first objective."""
    if rule_text is not None:
        try:
            check_rule(rule_text, spec.metrics)
        except ValueError as e:
            raise UsageError(f"--pick: {e}") from None
    return Rule.parse(rule_text) if rule_text else Rule.first_objective(spec)


def _baseline(
    cands: list[Candidate], estimates: dict[str, Estimate], rule: Rule, base_cfg: dict[str, Any] | None
) -> Candidate | None:
    """The spec's baseline: a contender already (baseline False), else a candidate of its own."""
    if base_cfg is None:
        return None
    k = config_key(base_cfg)
    base = next((c for c in cands if config_key(c.config) == k), None)
    if base is not None:
        return base
    e = estimates.get(k)
    return Candidate(
        trial=e.first_trial if e else -1,
        config=base_cfg,
        value=(e.mean(rule.metric) or float("nan")) if e else float("nan"),
        blocks=e.n if e else 0,
        baseline=True,
    )


def _against_baseline(spec: Spec, pick: Pick, base: Candidate, rule: Rule) -> dict[str, Any]:
    """What the pick gains over the baseline, where the race measured it beside the winner."""
    if not base.baseline and base.trial == pick.winner:
        return {"config": base.config, "text": "the baseline is the chosen config", "significant": False}
    if base.round_metrics:
        return baseline_gain(pick.chosen, base, rule, spec.pick.confidence)
    return {
        "config": base.config,
        "text": "the baseline was not measured beside the winner, so no gain over it is claimed",
        "significant": False,
    }


class _Race:
    """One race of the contenders on an executor, each block stored in the study as it ends."""

    def __init__(
        self,
        spec: Spec,
        study: optuna.Study,
        executor: Any,
        estimates: dict[str, Estimate],
        stored: list[dict[str, Any]],
    ) -> None:
        self.spec, self.study, self.executor, self.estimates = spec, study, executor, estimates
        self.race_id = 1 + max((int(b.get("race", 0)) for b in stored), default=0)
        self.blocks = list(stored)

    def run(
        self, rule: Rule, cands: list[Candidate], racers: list[Candidate], baseline: bool, progress: Progress
    ) -> None:
        spec = self.spec
        progress.say(
            f"\nracing {len(cands)} contender(s)"
            + (" and the baseline" if baseline else "")
            + f" on {rule}: {spec.pick.rounds}-{spec.pick.max_rounds} interleaved rounds of "
            f"{spec.pick.round_time_s:g} s blocks, each in a fresh worker: "
            + ", ".join(f"#{c.trial}" for c in cands)
        )
        run_race(spec, rule, racers, self.measure, self.on_block, progress.say, self.breaks)

    def measure(self, config: dict[str, Any]) -> TrialResult:
        req = TrialRequest(-1, config, meta={"block_s": block_seconds(self.spec, self.estimates, config)})
        try:
            return self.executor.submit(req).result()
        except Exception as e:  # noqa: BLE001 - an executor fault drops the candidate only
            return TrialResult.failure("error", f"executor: {type(e).__name__}: {e}")

    def on_block(self, c: Candidate, r: int, res: TrialResult, loaded: bool) -> None:
        self.blocks.append({**race_block_record(c, r, res, loaded), "race": self.race_id})
        rec.save_race(self.study, self.blocks)

    def breaks(self, c: Candidate) -> str | None:
        """The constraint a candidate breaks with its race blocks pooled in, or None."""
        e = self.estimates.get(config_key(c.config)) or Estimate(config_key(c.config), c.config)
        mixed = Estimate(e.key, e.config, list(e.trials), list(e.blocks))
        mixed.blocks += [Block(m) for m in c.round_metrics]
        return feasible(mixed, self.spec.constraints)[1]


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

    return complete(spec, dict(spec.baseline))


def _refused(spec: Spec, config: dict[str, Any], executor: Any, trials: list[Any]) -> bool:
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
