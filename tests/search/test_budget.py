"""The budget counts measurements: refusals and pooled repeats are free, and every block pools.

The driver runs for real on a real SQLite study; the executor replays a recorded landscape (the
collaborator these tests are not about), so each config answers with one of its recorded rounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import FAST_MEASUREMENT, PLAIN_RANDOM, make_spec_dict
from optuna.trial import TrialState

from autotuner import api
from autotuner.api import spec_from_dict
from autotuner.execution.base import TrialRequest
from autotuner.execution.capabilities import probe  # noqa: E402
from autotuner.execution.replay import ReplayExecutor, load_landscape
from autotuner.progress import Progress
from autotuner.result import TrialResult
from autotuner.search import driver
from autotuner.search.estimates import config_key, pool, race_blocks

CAPS = probe()  # the real machine's facts: runner checks read them


def _landscape(path: Path, truth: dict[tuple[str, str, int], float], rounds: int = 4) -> Path:
    """A landscape file: each (backend, precision, batch) measured `rounds` times, 1% apart."""
    lines = []
    for (backend, precision, bs), tp in truth.items():
        for r in range(rounds):
            config = {"backend": backend, "precision": precision, "batch_size": bs, "threads": 1}
            v = tp * (1 + 0.01 * (r - rounds / 2))
            m = {
                "throughput_items_s": v,
                "latency_p95_ms": 1000 * bs / v,
                "accuracy_cosine": 0.999,
                "peak_memory_mb": 100.0 + bs,
                "measure_s": 0.5,
                "setup_s": 1.0,
                "foreign_load": 0.0,
            }
            lines.append(json.dumps({"config": config, "round": r, "metrics": m, "measure_s": 0.5}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _spec(tmp: Path, **over: Any) -> Any:
    d = make_spec_dict(storage=f"sqlite:///{tmp / 'study.db'}", **over)
    return spec_from_dict(d, "test")


def _drive(spec: Any, executor: Any, budget: int) -> Any:
    study = api.open_study(spec, caps=CAPS)
    api.search(spec, study, executor, trials=budget, caps=CAPS)
    return study


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))


def test_refusals_cost_no_budget_and_are_still_learned(tmp_path: Path) -> None:
    truth = {
        (b, p, bs): 100.0 * bs * (2 if b == "onnxruntime-cpu" else 1)
        for b in ("torch-eager", "onnxruntime-cpu")
        for p in ("fp32", "int8-dynamic")
        for bs in (1, 2, 4, 8)
    }
    land = load_landscape(_landscape(tmp_path / "l.jsonl", truth))
    # bf16 is refused by onnxruntime before launch; fp16 by torch on CPU is not, so only ORT refuses.
    spec = _spec(
        tmp_path,
        space={
            "backend": ["torch-eager", "onnxruntime-cpu"],
            "precision": ["fp32", "int8-dynamic", "bf16"],
            "batch_size": [1, 2, 4, 8],
            "threads": [1],
        },
        sampler=PLAIN_RANDOM,
        seed=1,
    )
    ex = ReplayExecutor(spec, CAPS, land, seed=1)
    study = _drive(spec, ex, budget=8)
    trials = study.get_trials(deepcopy=False)
    refused = [t for t in trials if t.user_attrs.get("failure_class") == "unsupported"]
    assert refused, "the random sampler proposes onnxruntime bf16 in 8 draws from 24 (seed 1)"
    assert all(t.state == TrialState.PRUNED and t.constraints for t in refused), "infeasible, for TPE"
    assert driver.counted(trials) == 8, "the budget counts the 8 measurements, not the refusals"
    assert ex.blocks == 8 - sum(1 for t in trials if t.user_attrs.get("failure_class") == "error")


@pytest.mark.parametrize("repeats", [1, 3])
def test_repeats_are_pooled_or_spent_on_contenders_and_the_space_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repeats: int
) -> None:
    """repeats=1 is the shipped rule (the race re-measures contenders); 3 lets the search itself
    measure a contender again, and then only a contender of the leader of its time."""
    monkeypatch.setattr(driver, "REPEATS_FOR_CONTENDERS", repeats)
    truth = {("torch-eager", "fp32", bs): 100.0 * bs for bs in range(1, 7)}
    land = load_landscape(_landscape(tmp_path / "l.jsonl", truth))
    spec = _spec(
        tmp_path,
        space={
            "backend": "torch-eager",
            "precision": "fp32",
            "batch_size": list(range(1, 7)),
            "threads": [1],
        },
        sampler=PLAIN_RANDOM,
        seed=0,
    )
    ex = ReplayExecutor(spec, CAPS, land, seed=0)
    study = _drive(spec, ex, budget=30)
    trials = study.get_trials(deepcopy=False)
    est = {e.config["batch_size"]: e for e in pool(trials).values()}
    assert sorted(est) == [1, 2, 3, 4, 5, 6], "every config measured before the space counts as done"
    assert all(e.n <= repeats for e in est.values())
    if repeats > 1:
        assert any(e.n > 1 for e in est.values()), "a contender's repeat is measured (seed 0)"
    for t in trials:
        if "repeat_of" not in t.user_attrs:
            continue
        before = pool([x for x in trials if x.number < t.number])
        lead = max(e.mean("throughput_items_s") for e in before.values())
        mine = before[config_key(t.user_attrs["config"])].mean("throughput_items_s")
        assert mine >= 0.6 * lead, f"#{t.number} re-measured a config far below the leader of its time"
    pooled = [t for t in trials if "pooled_from" in t.user_attrs]
    assert pooled, "random sampling of 6 configs repeats itself before it has seen all 6 (seed 0)"
    for t in pooled:
        assert t.state == TrialState.COMPLETE
        assert t.values[0] == pytest.approx(
            est[t.user_attrs["config"]["batch_size"]].mean("throughput_items_s")
        )
    assert driver.counted(trials) == sum(e.n for e in est.values()) == ex.blocks
    assert driver.counted(trials) < 30, "the budget is not spent on a space that is done"


class LoadedOnce(ReplayExecutor):
    """The first block of each config comes back as if another process shared its cores."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.seen: set[str] = set()

    def answer(self, request: TrialRequest) -> TrialResult:
        res = super().answer(request)
        k = config_key(request.config)
        if k not in self.seen:
            self.seen.add(k)
            res.metrics["foreign_load"] = 1.5
            res.metrics["throughput_items_s"] *= 0.5
        return res


def test_a_trial_under_foreign_load_is_kept_left_out_and_measured_again(tmp_path: Path) -> None:
    truth = {("torch-eager", "fp32", bs): 100.0 * bs for bs in (1, 2, 4)}
    land = load_landscape(_landscape(tmp_path / "l.jsonl", truth))
    spec = _spec(
        tmp_path,
        space={"backend": "torch-eager", "precision": "fp32", "batch_size": [1, 2, 4], "threads": [1]},
        sampler={"type": "grid"},
        measurement={**FAST_MEASUREMENT, "max_foreign_load": 0.1},
        seed=0,
    )
    ex = LoadedOnce(spec, CAPS, land, seed=0)
    study = _drive(spec, ex, budget=3)
    trials = study.get_trials(deepcopy=False)
    loaded = [t for t in trials if t.user_attrs.get("failure_class") == "under-load"]
    assert len(loaded) == 3 and all(t.state == TrialState.FAIL for t in loaded)
    assert all(t.user_attrs["throughput_items_s"] > 0 for t in loaded), "what was measured is kept"
    assert driver.counted(trials) == 3 and ex.blocks == 6
    for e in pool(trials).values():
        assert e.under_load == 1 and e.n == 1
        assert e.mean("throughput_items_s") == pytest.approx(100.0 * e.config["batch_size"], rel=0.03)


def test_race_blocks_pool_into_the_estimate_the_export_reads(tmp_path: Path) -> None:
    truth = {("torch-eager", "fp32", bs): 100.0 * bs for bs in (1, 2)} | {
        ("onnxruntime-cpu", "fp32", 2): 205.0
    }
    land = load_landscape(_landscape(tmp_path / "l.jsonl", truth))
    spec = _spec(
        tmp_path,
        space={
            "backend": ["torch-eager", "onnxruntime-cpu"],
            "precision": "fp32",
            "batch_size": [1, 2],
            "threads": [1],
        },
        sampler={"type": "grid"},
        pick={"rounds": 3, "max_rounds": 6, "round_time_s": 0.1},
        baseline={"backend": "torch-eager", "batch_size": 1},
        seed=0,
    )
    land[config_key({"backend": "onnxruntime-cpu", "precision": "fp32", "batch_size": 1, "threads": 1})] = [
        {"config": {}, "round": 0, "failure_class": "error", "message": "not recorded"}
    ]
    ex = ReplayExecutor(spec, CAPS, land, seed=0)
    study = _drive(spec, ex, budget=4)
    pick = api.choose(spec, study, None, ex, Progress(quiet=True))
    assert pick is not None and pick.remeasured
    assert pick.config["backend"] == "onnxruntime-cpu", "205 items/s beats 200 at 1% noise"
    blocks = race_blocks(study.user_attrs)
    assert blocks, "every race block is stored in the study as it is measured"
    est = pool(study.get_trials(deepcopy=False), blocks)[config_key(pick.config)]
    assert est.n == len(est.trials) + len(pick.chosen.rounds), "its trials and race rounds pool"
    assert pick.baseline and "x" in pick.baseline["text"], "the baseline ran in the same rounds"
    assert pick.baseline["significant"], "the winner is about 2x the baseline"
    out = api.write_best_config(spec, study, pick, tmp_path / "best.yaml")
    import yaml

    best = yaml.safe_load(out.read_text())
    assert best["metrics"]["throughput_items_s"]["blocks"] == est.n
    assert best["choice"]["baseline"]["significant"] is True


def test_a_budget_in_measurement_seconds_ends_the_search(tmp_path: Path) -> None:
    truth = {("torch-eager", "fp32", bs): 100.0 * bs for bs in range(1, 9)}
    land = load_landscape(_landscape(tmp_path / "l.jsonl", truth))  # 0.5 s of timed measurement each
    spec = _spec(
        tmp_path,
        space={
            "backend": "torch-eager",
            "precision": "fp32",
            "batch_size": list(range(1, 9)),
            "threads": [1],
        },
        sampler={"type": "random"},
        budget={"trials": 50, "measure_s": 2.0},
        seed=0,
    )
    ex = ReplayExecutor(spec, CAPS, land, seed=0)
    study = _drive(spec, ex, budget=50)
    assert driver.counted(study.get_trials(deepcopy=False)) == 4 == ex.blocks
    assert ex.measure_s == pytest.approx(2.0)
