"""Choosing with noise in mind: intervals, paired ties, tie-break rules."""

from __future__ import annotations

import math

import pytest

from autotuner.pick import Candidate, Rule, decide
from autotuner.stats import mean_ci, paired_difference, t_quantile


def test_t_quantiles_and_interval() -> None:
    assert t_quantile(0.95, 4) == pytest.approx(2.776)
    assert t_quantile(0.95, 1000) == pytest.approx(1.95996, rel=1e-4)
    mean, lo, hi = mean_ci([10.0, 12.0, 11.0, 13.0, 9.0], 0.95)
    sd = math.sqrt(2.5)
    assert mean == 11.0 and hi - mean == pytest.approx(2.776 * sd / math.sqrt(5))
    assert lo == pytest.approx(2 * mean - hi)
    assert mean_ci([5.0], 0.95)[1] == -math.inf


def test_paired_difference_cancels_shared_drift() -> None:
    # Both candidates drift together by round; the paired difference is a constant 5.
    a = [100.0, 80.0, 120.0, 90.0]
    b = [95.0, 75.0, 115.0, 85.0]
    mean, lo, hi = paired_difference(a, b, 0.95)
    assert mean == 5.0 and lo == hi == 5.0
    # Unpaired, the same data would overlap heavily.
    assert mean_ci(a, 0.95)[1] < mean_ci(b, 0.95)[2]


def _cands(rounds: dict[int, list[float]]) -> list[Candidate]:
    return [Candidate(trial=n, config={"batch_size": n}, value=r[0], rounds=r) for n, r in rounds.items()]


def test_clear_winner_has_no_ties() -> None:
    pick = decide(
        _cands({1: [100, 101, 99, 100], 2: [80, 81, 79, 80]}),
        Rule.parse("max:throughput_items_s"),
        Rule.parse("min:peak_memory_mb"),
        0.95,
        {},
    )
    assert pick.winner == 1 and pick.tied_with == [] and pick.remeasured
    assert "no other candidate" in pick.reason


def test_tie_inside_the_noise_is_broken_by_the_stated_rule() -> None:
    rounds = {1: [100, 90, 110, 95], 2: [98, 97, 99, 102], 3: [50, 51, 49, 50]}
    memory = {1: {"peak_memory_mb": 900.0}, 2: {"peak_memory_mb": 300.0}, 3: {"peak_memory_mb": 10.0}}
    pick = decide(
        _cands(rounds), Rule.parse("max:throughput_items_s"), Rule.parse("min:peak_memory_mb"), 0.95, memory
    )
    assert pick.winner == 2, "1 and 2 tie; 2 uses less memory; 3 is clearly slower"
    assert pick.tied_with == [1]
    assert "tie on max:throughput_items_s" in pick.reason and "min:peak_memory_mb" in pick.reason


def test_min_rule_and_single_candidate() -> None:
    pick = decide(
        _cands({4: [5.0, 5.1, 4.9], 7: [9.0, 9.2, 8.8]}),
        Rule.parse("min:latency_p95_ms"),
        Rule.parse("min:peak_memory_mb"),
        0.95,
        {},
    )
    assert pick.winner == 4
    lone = decide(
        [Candidate(trial=3, config={}, value=1.0)],
        Rule.parse("max:throughput_items_s"),
        Rule.parse("min:peak_memory_mb"),
        0.95,
        {},
    )
    assert lone.winner == 3 and not lone.remeasured
