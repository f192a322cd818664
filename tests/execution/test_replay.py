"""The replay executor keeps its grader's answers and its fidelities apart, on real recorded files.

- Truth split: benchmarks/landscapes/quickstart6.jsonl (MiniLM, recorded on this machine) with its
  last rounds held out; no block the replay serves, to the real driver and race included, comes
  from a held-out round.
- Fidelity: tests/data/fidelity_landscape.jsonl (a small real landscape recorded with
  record_landscape.py, trial-length and --short-s 0.05 rounds): a short request is answered with
  short recorded blocks only, a trial-length one never with a short block.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from autotuner.api import load_spec
from autotuner.execution.base import TrialRequest
from autotuner.execution.replay import ReplayExecutor, load_landscape, split_rounds, trial_rounds

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "benchmarks" / "landscapes" / "quickstart6.jsonl"
FIDELITY = ROOT / "tests" / "data" / "fidelity_landscape.jsonl"
sys.path.insert(0, str(ROOT / "benchmarks"))


def _held(truth: dict) -> set[tuple[str, int]]:
    return {(k, int(r["round"])) for k, recs in truth.items() for r in recs if "metrics" in r}


def _serve_all(ex: ReplayExecutor, land: dict, times: int) -> None:
    for recs in land.values():
        for _ in range(times):
            ex.answer(TrialRequest(0, recs[0]["config"]))


def test_held_out_rounds_are_never_served() -> None:
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    land = load_landscape(QUICKSTART)
    replay, truth = split_rounds(land, 1)
    held = _held(truth)
    assert held, "the split held nothing out"
    for key, recs in land.items():
        rounds = trial_rounds(recs)
        if rounds:
            assert (key, rounds[-1]) in held and (key, rounds[0]) not in held
    ex = ReplayExecutor(spec, {}, replay, seed=3)
    _serve_all(ex, replay, 12)
    served = {(k, r) for k, r, _ in ex.served}
    assert served and not served & held
    # The same requests on the whole file do serve the held-out rounds: the check can fail.
    whole = ReplayExecutor(spec, {}, land, seed=3)
    _serve_all(whole, land, 12)
    assert {(k, r) for k, r, _ in whole.served} & held


def test_the_real_driver_and_race_see_no_truth_round() -> None:
    from search_quality import one_run

    run = one_run((str(ROOT / "search_spaces" / "quickstart.yaml"), str(QUICKSTART), "default", 0, 1))
    assert run["config"] is not None and run["blocks"] > 0
    assert run["served_truth"] == 0


def test_too_few_rounds_for_the_split_is_refused(capsys) -> None:
    from search_quality import split

    fewest = min(len(trial_rounds(r)) for r in load_landscape(QUICKSTART).values() if trial_rounds(r))
    with pytest.raises(SystemExit) as e:
        split(str(QUICKSTART), fewest - 1)
    assert e.value.code == 2
    assert "record more" in capsys.readouterr().err


def test_short_requests_are_answered_with_short_blocks_only() -> None:
    spec = load_spec(ROOT / "tests" / "data" / "fidelity_landscape.yaml")
    land = load_landscape(FIDELITY)
    shorts = [r for recs in land.values() for r in recs if r.get("fidelity") == "short"]
    assert shorts and all(r["block_s"] < spec.measurement.min_time_s for r in shorts)
    ex = ReplayExecutor(spec, {}, land, seed=0)
    for recs in land.values():
        config = recs[0]["config"]
        for _ in range(5):
            a = ex.answer(TrialRequest(0, config, fidelity="short"))
            b = ex.answer(TrialRequest(0, config, {"block_s": 0.05}))
            c = ex.answer(TrialRequest(0, config))
            d = ex.answer(TrialRequest(0, config, {"block_s": spec.measurement.min_time_s}))
            assert a.ok and b.ok and c.ok and d.ok
            assert a.metrics["measure_s"] < 0.5 * spec.measurement.min_time_s
            assert c.metrics["measure_s"] >= spec.measurement.min_time_s * 0.9
    kinds = [f for _, _, f in ex.served]
    assert kinds == ["short", "short", "trial", "trial"] * (5 * len(land))


def test_a_short_request_without_short_blocks_fails_rather_than_serve_a_long_one(tmp_path) -> None:
    spec = load_spec(ROOT / "tests" / "data" / "fidelity_landscape.yaml")
    lines = [json.loads(x) for x in FIDELITY.read_text().splitlines() if x.strip()]
    path = tmp_path / "long_only.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines if r.get("fidelity") != "short"))
    land = load_landscape(path)
    ex = ReplayExecutor(spec, {}, land, seed=0)
    res = ex.answer(TrialRequest(0, next(iter(land.values()))[0]["config"], fidelity="short"))
    assert not res.ok and "no short block" in (res.failure_message or "")
    assert ex.served == []


def test_a_synthetic_landscape_is_graded_against_its_noise_free_truth(capsys) -> None:
    """--exact-truth: the grader's value of a config is the construction's own mean (no round
    drawn), its generated rounds scatter about it, and its best is the set interaction's corner
    (static int8, per-channel, graph level `all`). A recorded file has no such truth: exit 2."""
    import math

    from search_quality import exact_truth, read_landscape, strategy_spec

    synthetic = ROOT / "benchmarks" / "landscapes" / "synthetic.json"
    spec = strategy_spec(str(ROOT / "benchmarks" / "landscapes" / "synthetic.yaml"), "default")
    land = read_landscape(str(synthetic))
    truth = exact_truth(spec, str(synthetic), land)
    runnable = {k for k, recs in land.items() if any("metrics" in r for r in recs)}
    assert set(truth) == runnable
    assert all(t["values"] == [] for t in truth.values())  # no tie clause on an exact truth
    off = []
    for k, t in truth.items():
        logs = [
            math.log(r["metrics"]["throughput_items_s"])
            for r in land[k]
            if "metrics" in r and r.get("fidelity") != "short"
        ]
        mid = sum(logs) / len(logs)
        sd = (sum((x - mid) ** 2 for x in logs) / (len(logs) - 1)) ** 0.5
        off.append(abs(mid - math.log(t["mean"])) / (sd / math.sqrt(len(logs))))
    assert sorted(off)[len(off) // 2] < 1.0  # the rounds' means centre on the truth
    best = max((t for t in truth.values() if t["feasible"]), key=lambda t: t["mean"])["config"]
    assert (best["precision"], best["per_channel"], best["graph_optimization_level"]) == ("int8", True, "all")
    with pytest.raises(SystemExit) as e:
        exact_truth(spec, str(QUICKSTART), load_landscape(QUICKSTART))
    assert e.value.code == 2
    assert "synthetic construction" in capsys.readouterr().err
