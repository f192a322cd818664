"""Choosing with noise in mind: intervals, the race's stopping rule, ties, tie-breaks, baseline gain."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import pytest
from helpers import make_spec_dict

from autotuner.api import spec_from_dict
from autotuner.progress import Progress
from autotuner.result import TrialResult
from autotuner.search.pick import Candidate, Rule, baseline_gain, pick_winner
from autotuner.search.race import run_race
from autotuner.search.stats import (
    mean_ci,
    normal_quantile,
    paired_difference,
    t_cdf,
    t_quantile,
    welch_df,
    welch_difference,
)

MAX_TP = Rule.parse("max:throughput_items_s")
TIE_BREAKS = [Rule.parse("min:peak_memory_mb"), Rule.parse("min:latency_p95_ms")]


def test_t_quantiles_and_interval() -> None:
    # Published values (Student's t table, to six places), and the normal limit.
    assert t_quantile(0.95, 4) == pytest.approx(2.776445, rel=1e-6)
    assert t_quantile(0.99, 1) == pytest.approx(63.656741, rel=1e-6)
    assert t_quantile(0.95, 1000) == pytest.approx(1.962339, rel=1e-6)
    assert (
        t_quantile(0.95, 10**9) == pytest.approx(normal_quantile(0.95)) == pytest.approx(1.959964, rel=1e-6)
    )
    assert t_quantile(0.95, 0) == math.inf
    mean, lo, hi = mean_ci([10.0, 12.0, 11.0, 13.0, 9.0], 0.95)
    sd = math.sqrt(2.5)
    assert mean == 11.0 and hi - mean == pytest.approx(2.776445 * sd / math.sqrt(5), rel=1e-6)
    assert lo == pytest.approx(2 * mean - hi)
    assert mean_ci([5.0], 0.95)[1] == -math.inf
    with pytest.raises(ValueError, match="confidence"):
        t_quantile(1.0, 4)


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.975, 0.999])
@pytest.mark.parametrize("df", [1, 2.5, 7, 29, 31, 64, 150, 5000])
def test_any_confidence_and_any_df_agree_with_the_t_cdf(confidence: float, df: float) -> None:
    """No table: every confidence and df (fractional too) inverts the t distribution."""
    q = t_quantile(confidence, df)
    assert 2 * t_cdf(q, df) - 1 == pytest.approx(confidence, abs=1e-9)


def test_welch_and_paired_intervals_match_scipys_tests() -> None:
    from scipy.stats import ttest_ind, ttest_rel

    rng = random.Random(3)
    a = [rng.gauss(100, 5) for _ in range(7)]
    b = [rng.gauss(95, 12) for _ in range(5)]
    for conf in (0.9, 0.95, 0.99):
        d, lo, hi = welch_difference(a, b, conf)
        ci = ttest_ind(a, b, equal_var=False).confidence_interval(conf)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert d == pytest.approx(sum(a) / 7 - sum(b) / 5)
        c = a[:5]
        _, plo, phi = paired_difference(c, b, conf)
        ci = ttest_rel(c, b).confidence_interval(conf)
        assert (plo, phi) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert welch_difference([1.0], b, 0.95)[1] == -math.inf
    assert welch_difference([2.0, 2.0], [1.0, 1.0], 0.95) == (1.0, 1.0, 1.0)
    assert 0 < welch_df(a, b) < len(a) + len(b) - 2


def test_stats_has_no_typed_in_quantile_table() -> None:
    import inspect

    from autotuner.search import stats

    numbers = re.findall(r"\b\d+\.\d{3,}\b", inspect.getsource(stats))
    assert numbers == [], numbers


def test_paired_difference_cancels_shared_drift() -> None:
    a = [100.0, 80.0, 120.0, 90.0]
    b = [95.0, 75.0, 115.0, 85.0]
    mean, lo, hi = paired_difference(a, b, 0.95)
    assert mean == 5.0 and lo == hi == 5.0
    assert mean_ci(a, 0.95)[1] < mean_ci(b, 0.95)[2]


def _spec(**pick: Any) -> Any:
    d = make_spec_dict(pick={"rounds": 3, "max_rounds": 12, "round_time_s": 0.1, **pick})
    return spec_from_dict(d, "test")


class Noisy:
    """A block measurement: each config's true throughput, memory and p95 with seeded noise."""

    def __init__(self, truth: dict[int, tuple[float, float, float]], rel_noise: float, seed: int = 0):
        self.truth = truth
        self.rel = rel_noise
        self.rng = random.Random(seed)
        self.calls: list[int] = []

    def __call__(self, config: dict[str, Any]) -> TrialResult:
        n = config["batch_size"]
        self.calls.append(n)
        tp, mem, p95 = self.truth[n]
        jitter = 1 + self.rng.gauss(0, self.rel)
        return TrialResult(
            ok=True,
            metrics={
                "throughput_items_s": tp * jitter,
                "peak_memory_mb": mem * (1 + self.rng.gauss(0, 0.0005)),
                "latency_p95_ms": p95 / jitter,
                "foreign_load": 0.0,
            },
        )


def _cands(*ns: int, baseline: int | None = None) -> list[Candidate]:
    out = [Candidate(trial=n, config={"batch_size": n}, value=0.0) for n in ns]
    if baseline is not None:
        out.append(Candidate(trial=-1, config={"batch_size": baseline}, value=0.0, baseline=True))
    return out


def _race(spec: Any, cands: list[Candidate], measure: Noisy) -> int:
    return run_race(spec, MAX_TP, cands, measure, lambda *a: None, lambda s: None)


def test_a_clearly_worse_candidate_is_dropped_early_and_the_race_stops() -> None:
    spec = _spec()
    cands = _cands(1, 2)
    measure = Noisy({1: (100.0, 500.0, 10.0), 2: (60.0, 500.0, 10.0)}, rel_noise=0.02)
    rounds = _race(spec, cands, measure)
    assert rounds == 3, "three rounds are enough to beat a 40% worse config at 2% noise"
    assert cands[1].dropped and "beaten by trial #1" in cands[1].dropped
    pick = pick_winner(cands, MAX_TP, TIE_BREAKS, 0.95, 0.02)
    assert pick.winner == 1 and pick.tied_with == [] and pick.remeasured
    assert len(measure.calls) == 6


def test_two_identical_configs_end_as_a_tie_not_a_win() -> None:
    spec = _spec()
    cands = _cands(1, 2)
    same = (100.0, 500.0, 10.0)
    rounds = _race(spec, cands, Noisy({1: same, 2: same}, rel_noise=0.01, seed=3))
    assert rounds <= 12
    assert all(c.dropped is None for c in cands), "neither may be 'beaten' by noise"
    pick = pick_winner(cands, MAX_TP, TIE_BREAKS, 0.95, 0.02)
    assert len(pick.tied_with) == 1 and "tie on max:throughput_items_s" in pick.reason


def test_identical_configs_are_told_apart_at_most_at_the_stated_confidence() -> None:
    """Over 60 seeded races between equals, the race looks after every round; without splitting
    its confidence over the looks it drops one of two equals in about a fifth of the races."""
    same = (100.0, 500.0, 10.0)
    false_drops = 0
    for seed in range(60):
        cands = _cands(1, 2)
        _race(_spec(), cands, Noisy({1: same, 2: same}, rel_noise=0.03, seed=seed))
        false_drops += any(c.dropped for c in cands)
    assert false_drops <= 3, f"{false_drops} of 60 races called one of two identical configs beaten"


def test_a_tie_break_must_itself_be_beyond_noise() -> None:
    spec = _spec(max_rounds=6)
    cands = _cands(1, 2)
    # Same throughput; 0.1 MB apart on 500 MB (noise), p95 four times apart (real).
    measure = Noisy({1: (100.0, 500.1, 40.0), 2: (100.0, 500.0, 10.0)}, rel_noise=0.01, seed=1)
    _race(spec, cands, measure)
    pick = pick_winner(cands, MAX_TP, TIE_BREAKS, 0.95, 0.02)
    assert pick.winner == 2
    assert "better on min:latency_p95_ms" in pick.reason, pick.reason
    # Memory alone (0.02% apart) may not decide: without the latency rule, the best mean stands.
    only_mem = pick_winner(cands, MAX_TP, TIE_BREAKS[:1], 0.95, 0.02)
    assert "no tie-break" in only_mem.reason


def test_baseline_gain_is_paired_and_says_when_there_is_none() -> None:
    spec = _spec(max_rounds=5)
    cands = _cands(1, baseline=9)
    _race(spec, cands, Noisy({1: (100.0, 1, 1), 9: (100.0, 1, 1)}, rel_noise=0.02, seed=2))
    pick = pick_winner(cands, MAX_TP, TIE_BREAKS, 0.95, 0.02)
    assert pick.winner == 1
    same = baseline_gain(pick.chosen, cands[1], MAX_TP, 0.95)
    assert not same["significant"] and same["text"].startswith("no significant gain")

    cands = _cands(1, baseline=9)
    _race(spec, cands, Noisy({1: (150.0, 1, 1), 9: (100.0, 1, 1)}, rel_noise=0.02, seed=2))
    pick = pick_winner(cands, MAX_TP, TIE_BREAKS, 0.95, 0.02)
    gain = baseline_gain(pick.chosen, cands[1], MAX_TP, 0.95)
    assert gain["significant"] and 1.4 < gain["ratio"] < 1.6 and gain["ci"][0] > 1


def test_a_block_under_foreign_load_is_measured_again() -> None:
    from helpers import FAST_MEASUREMENT

    d = make_spec_dict(
        pick={"rounds": 3, "max_rounds": 3, "round_time_s": 0.1},
        measurement={**FAST_MEASUREMENT, "max_foreign_load": 0.1},
    )
    spec = spec_from_dict(d, "test")
    cands = _cands(1, 2)
    inner = Noisy({1: (100.0, 1, 1), 2: (50.0, 1, 1)}, rel_noise=0.01)
    loaded_once = {"left": 1}

    def measure(config: dict[str, Any]) -> TrialResult:
        res = inner(config)
        if config["batch_size"] == 1 and loaded_once["left"]:
            loaded_once["left"] -= 1
            res.metrics["foreign_load"] = 1.0
            res.metrics["throughput_items_s"] *= 0.5
        return res

    seen: list[bool] = []
    run_race(spec, MAX_TP, cands, measure, lambda c, r, res, loaded: seen.append(loaded), lambda s: None)
    assert seen.count(True) == 1, "the loaded block is stored, flagged"
    assert min(cands[0].rounds) > 90, "and left out of the race: a clean block replaced it"


def test_single_candidate_without_rounds_is_not_remeasured() -> None:
    lone = pick_winner([Candidate(trial=3, config={}, value=1.0)], MAX_TP, TIE_BREAKS, 0.95, 0.02)
    assert lone.winner == 3 and not lone.remeasured
    assert "best pooled estimate" in lone.reason


def test_the_race_stops_when_its_time_budget_is_spent() -> None:
    """pick.time_s ends a race that has not settled. The blocks sleep, so the budget is spent by
    the end of the first look (a sleep never ends early: nothing here depends on the machine's
    speed); the same race without a budget goes on."""
    import time

    truth = {1: (100.0, 500.0, 10.0), 2: (100.0, 500.0, 10.0)}

    def slow(measure: Noisy) -> Any:
        def block(config: dict[str, Any]) -> TrialResult:
            time.sleep(0.02)
            return measure(config)

        return block

    said: list[str] = []
    spec = _spec(rounds=3, max_rounds=12, time_s=0.01)
    timed = slow(Noisy(truth, rel_noise=0.3, seed=5))
    rounds = run_race(spec, MAX_TP, _cands(1, 2), timed, lambda *a: None, said.append)
    assert rounds == 3 and "  the race's time budget (0.01 s) is spent" in said
    again = Noisy(truth, rel_noise=0.3, seed=5)
    unbounded = _race(_spec(rounds=3, max_rounds=12), _cands(1, 2), again)
    assert unbounded > 3, "without the budget this race goes on: the budget is what stopped it"


class ScriptedExecutor:
    """Stands in for the executor (not what this test is about): each block of a config returns
    the next of its scripted metrics."""

    slots = 1

    def __init__(self, caps: dict[str, Any], script: dict[int, list[dict[str, float]]]) -> None:
        self.caps = caps
        self.script = script
        self.calls: list[int] = []

    def submit(self, request: Any) -> Any:
        from concurrent.futures import Future

        n = int(request.config["batch_size"])
        self.calls.append(n)
        metrics = self.script[n][min(self.calls.count(n), len(self.script[n])) - 1]
        fut: Future[TrialResult] = Future()
        fut.set_result(TrialResult(ok=True, metrics={**metrics, "foreign_load": 0.0}))
        return fut

    def close(self) -> None:
        pass


def test_a_contender_that_breaks_a_constraint_when_re_measured_leaves_the_race(
    tmp_path: Any, caps: dict[str, Any]
) -> None:
    """The search measured batch 2 within the latency bound and ahead; re-measured in the race
    it is far over the bound: its pooled numbers break the constraint, it leaves the race, and
    batch 1 (within the bound in every block) is chosen. A real study in SQLite, the real
    driver and choose; only the measurements are scripted."""
    from autotuner import api

    d = make_spec_dict(
        space={"backend": ["torch-eager"], "batch_size": [1, 2], "threads": [1]},
        objectives=[{"metric": "throughput_items_s", "direction": "maximize"}],
        constraints=["latency_p95_ms <= 10"],
        sampler={"type": "grid"},
        budget={"trials": 2},
        pick={"top_k": 2, "rounds": 2, "max_rounds": 4, "round_time_s": 0.1},
    )
    spec = api.spec_from_dict(d)
    fast_ok = {"throughput_items_s": 105.0, "latency_p95_ms": 5.0, "latency_mean_ms": 4.0}
    fast_slow = {"throughput_items_s": 105.0, "latency_p95_ms": 50.0, "latency_mean_ms": 4.0}
    steady = {"throughput_items_s": 100.0, "latency_p95_ms": 6.0, "latency_mean_ms": 4.0}
    ex = ScriptedExecutor(caps, {2: [fast_ok, fast_slow], 1: [steady]})
    study = api.open_study(spec, storage=f"sqlite:///{tmp_path / 's.db'}", caps=caps)
    api.search(spec, study, ex, caps=caps)  # type: ignore[arg-type]
    by_batch = {t.user_attrs["config"]["batch_size"]: t.number for t in study.trials}
    said: list[str] = []

    class Say(Progress):
        def say(self, line: str) -> None:
            said.append(line)

    pick = api.choose(spec, study, executor=ex, progress=Say(quiet=True))
    assert pick is not None and pick.winner == by_batch[1], said
    fast = next(c for c in pick.candidates if c.trial == by_batch[2])
    # Pooled over its search block (5 ms) and the two race rounds (50 ms each): 35 ms.
    assert fast.dropped == (
        "breaks a constraint on the re-measured numbers: latency_p95_ms <= 10 is broken: latency_p95_ms=35"
    )
    assert f"  trial #{by_batch[2]} leaves the race: {fast.dropped}" in said
    assert ex.calls.count(2) == 1 + 2  # its search trial, then the two rounds before the look


def test_a_second_block_that_agrees_narrows_a_configs_interval_not_widens_it() -> None:
    """Two blocks alone give a t interval on one degree of freedom (t = 12.7): pooled with the
    study's spread, a config measured twice in agreement is more certain than one measured once."""
    from autotuner.search.estimates import PRIOR_DF, Block, Estimate

    def est(*values: float) -> Estimate:
        return Estimate("k", {}, blocks=[Block({"throughput_items_s": v}) for v in values])

    rel_sd = 0.05
    m1, lo1, hi1 = est(305.0).interval("throughput_items_s", 0.95, rel_sd)
    m2, lo2, hi2 = est(300.0, 310.0).interval("throughput_items_s", 0.95, rel_sd)
    assert m1 == m2 == 305.0
    assert hi2 - m2 < hi1 - m1  # narrower with more evidence
    own = math.sqrt(50.0) / 305.0  # the two blocks' relative sd
    pooled = math.sqrt((own**2 + PRIOR_DF * rel_sd**2) / (1 + PRIOR_DF))
    assert hi2 - m2 == pytest.approx(t_quantile(0.95, 1 + PRIOR_DF) * 305.0 * pooled / math.sqrt(2))
    # Two blocks that disagree widely still get a wide interval: their own spread counts.
    _, _, hi3 = est(200.0, 410.0).interval("throughput_items_s", 0.95, rel_sd)
    assert hi3 - 305.0 > hi1 - m1
