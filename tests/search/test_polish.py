"""The refinement takes turns with the leader's neighbours, so that a last knob one value off the
best (the batch next to it, the other execution mode) is measured before the search ends.

The unit tests build the measurements by hand on a real spec; the slow one runs the real driver and
race on the semi-synthetic landscape of 6,370 runnable configs (benchmarks/synthetic_landscape.py),
graded against the construction's own noiseless truth.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from autotuner.api import spec_from_dict
from autotuner.search.estimates import config_key
from autotuner.search.proposals import Arms
from autotuner.search.space import neighbors

ROOT = Path(__file__).resolve().parents[2]
SPACE: dict[str, Any] = {
    "backend": "onnxruntime-cpu",
    "precision": ["fp32", "int8"],
    "per_channel": {"choices": [True, False], "when": {"precision": ["int8"]}},
    "int8_exclude": {"choices": ["none", "re:dense"], "when": {"precision": ["int8"]}},
    "batch_size": [4, 16],
}


def _spec() -> Any:
    return spec_from_dict(
        {
            "name": "polish",
            "model": {"builtin": "tiny-transformer"},
            "data": {"builtin": "sentences", "calibration": 32, "evaluation": 32},
            "space": SPACE,
            "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
            "constraints": ["accuracy_cosine >= 0.99"],
        },
        "polish",
    )


def _int8(per_channel: bool, exclude: str, batch: int) -> dict[str, Any]:
    return {
        "backend": "onnxruntime-cpu",
        "precision": "int8",
        "per_channel": per_channel,
        "int8_exclude": exclude,
        "batch_size": batch,
    }


def _arms(measured: list[tuple[dict[str, Any], float, float]]) -> Arms:
    arms = Arms(_spec(), [], repeats=2)
    for n, (config, tput, cosine) in enumerate(measured):
        arms.add(n, config, {"throughput_items_s": tput, "accuracy_cosine": cosine}, under_load=False)
    return arms


def _runnable(arms: Arms) -> Any:
    return lambda c: not arms.predicted_infeasible(c)


def test_the_polish_measures_a_step_from_the_leader_not_from_a_worse_config() -> None:
    leader = _int8(True, "none", 16)
    arms = _arms([(leader, 300.0, 0.995), ({**_int8(True, "none", 4)}, 200.0, 0.995)])
    arms.add(
        2,
        {"backend": "onnxruntime-cpu", "precision": "fp32", "batch_size": 4},
        {"throughput_items_s": 90.0, "accuracy_cosine": 1.0},
        False,
    )
    got = arms.polish_pick(_runnable(arms))
    assert got is not None
    assert config_key(got) in {config_key(c) for c in neighbors(_spec(), leader)}
    assert config_key(got) not in arms.estimates


def test_a_step_that_breaks_accuracy_is_crossed_to_the_setting_that_holds_it() -> None:
    """Per-tensor int8 holds the accuracy bound only with the dense layers kept in fp32: the
    leader's one step to no layers kept breaks it, and the config two steps away (per-channel, no
    layers kept) is what the polish must reach. Every other step of the leader is measured."""
    leader = _int8(False, "re:dense", 16)
    arms = _arms(
        [
            (leader, 200.0, 0.993),
            (_int8(False, "none", 4), 250.0, 0.95),  # per-tensor, nothing kept: breaks accuracy
            (_int8(False, "re:dense", 4), 150.0, 0.993),
            (_int8(True, "re:dense", 16), 180.0, 0.997),
            ({"backend": "onnxruntime-cpu", "precision": "fp32", "batch_size": 16}, 100.0, 1.0),
        ]
    )
    runnable = _runnable(arms)
    assert not runnable(_int8(False, "none", 16))  # predicted to break it, as its batch-4 twin did
    got = arms.polish_pick(runnable)
    assert got == _int8(True, "none", 16)


def test_refinement_alternates_the_model_and_the_polish() -> None:
    leader = _int8(True, "none", 16)
    arms = _arms(
        [
            (leader, 300.0, 0.995),
            (_int8(False, "re:dense", 4), 100.0, 0.993),
            ({"backend": "onnxruntime-cpu", "precision": "fp32", "batch_size": 4}, 80.0, 1.0),
            ({"backend": "onnxruntime-cpu", "precision": "fp32", "batch_size": 16}, 120.0, 1.0),
        ]
    )
    runnable = _runnable(arms)
    steps = {config_key(c) for c in neighbors(_spec(), leader)}
    for turn in range(1, 5):
        left = steps - set(arms.estimates)
        c = arms.refinement(runnable)
        assert c is not None
        if turn % 2 == 0 and left:  # the polish's turn: a step from the leader while one is left
            assert config_key(c) in left, (turn, c)
        arms.add(10 + turn, c, {"throughput_items_s": 50.0, "accuracy_cosine": 0.995}, False)


@pytest.mark.slow
def test_on_6370_configs_most_picks_are_within_2pct_of_the_best() -> None:
    """The spec's 60 trials, 20 seeds, the real driver and race replayed on the construction's
    10 generated rounds. Measured 2026-12-04: 16 of these 20 within 2% with the polish, 10 of 20
    with the model's ranking alone (the same seeds, the commit before)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from search_quality import exact_truth, landscape_caps, read_landscape, replayed_run, seeded_spec

    spec_path = str(ROOT / "benchmarks" / "landscapes" / "synthetic.yaml")
    land_path = str(ROOT / "benchmarks" / "landscapes" / "synthetic.json")
    land = read_landscape(land_path)
    caps = landscape_caps(land_path)
    truth = exact_truth(seeded_spec(spec_path, "default", 0), land_path, land)
    best = max(v["mean"] for v in truth.values() if v["feasible"])
    close = []
    for seed in range(20):
        spec = seeded_spec(spec_path, "default", seed)
        _, _, pick, _ = replayed_run(spec, caps, land, seed, f"polish-{seed}")
        assert pick is not None
        got = truth[config_key(pick.config)]
        close.append(got["feasible"] and got["mean"] >= 0.98 * best)
    assert sum(close) >= 14, f"{sum(close)} of 20 picks within 2% of the best"
