"""Short first looks (measurement.first_look_s): a new config is looked at briefly, and only one
that may still win is measured at full length.

The worker test runs a real torch model in this process; the driver tests run the real driver on
a real SQLite study with a replayed landscape (the executor is the collaborator they are not
about), whose short blocks answer first looks and whose trial-length blocks answer the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import FAST_MEASUREMENT, make_spec_dict

from autotuner import api
from autotuner.api import spec_from_dict
from autotuner.errors import SpecError
from autotuner.execution.capabilities import probe
from autotuner.execution.replay import ReplayExecutor, load_landscape
from autotuner.measure import worker
from autotuner.runners.base import Device
from autotuner.search.estimates import config_key
from autotuner.study import records as rec

CAPS = probe()
MEASUREMENT = {**FAST_MEASUREMENT, "min_time_s": 0.4, "max_time_s": 1.0, "first_look_s": 0.1}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))


def test_a_first_look_is_short_and_still_checks_accuracy() -> None:
    spec = spec_from_dict(make_spec_dict(measurement=MEASUREMENT))
    device = Device("cpu", tuple(sorted(os.sched_getaffinity(0))))
    config = {"backend": "torch-eager", "precision": "fp32", "batch_size": 2, "threads": 1}
    look = worker.run_trial(spec, config, device, {}, first_look_s=0.1)
    full = worker.run_trial(spec, config, device, {})
    assert look.ok and full.ok, (look.failure_message, full.failure_message)
    assert look.info["fidelity"] == "short" and "fidelity" not in full.info
    assert look.metrics["measure_s"] < 0.25 <= 0.4 <= full.metrics["measure_s"]
    assert "accuracy_cosine" in look.metrics  # a first look is a whole trial, only shorter
    race = worker.run_trial(spec, config, device, {}, block_s=0.05, first_look_s=0.1)
    assert "fidelity" not in race.info  # a race block keeps its own length


def test_a_first_look_must_be_shorter_than_a_trial() -> None:
    d = make_spec_dict(measurement={**MEASUREMENT, "first_look_s": 0.4})
    with pytest.raises(SpecError, match="first_look_s.*not under min_time_s"):
        spec_from_dict(d, "spec.yaml")


def _landscape(path: Path, truth: dict[int, float]) -> Path:
    """Batch sizes with a throughput each: 3 trial-length rounds and 3 short ones, 1% apart."""
    lines = []
    for bs, tp in truth.items():
        config = {"backend": "torch-eager", "precision": "fp32", "batch_size": bs, "threads": 1}
        for r in range(3):
            v = tp * (1 + 0.01 * (r - 1))
            m = {"throughput_items_s": v, "latency_p95_ms": 1000 * bs / v, "foreign_load": 0.0}
            full = {**m, "accuracy_cosine": 0.999, "measure_s": 0.4, "setup_s": 0.2}
            lines.append(json.dumps({"config": config, "round": r, "metrics": full}))
            short = {**m, "measure_s": 0.1, "setup_s": 0.2}
            lines.append(
                json.dumps(
                    {"config": config, "round": r, "metrics": short, "fidelity": "short", "block_s": 0.1}
                )
            )
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(tmp: Path, truth: dict[int, float], trials: int, **over: Any) -> tuple[Any, ReplayExecutor]:
    fields: dict[str, Any] = {
        "storage": f"sqlite:///{tmp / 'study.db'}",
        "space": {"backend": "torch-eager", "precision": "fp32", "batch_size": list(truth), "threads": [1]},
        "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
        "sampler": {"type": "random", "n_startup_trials": 0, "refine_share": 0},
        "measurement": MEASUREMENT,
        "seed": 1,
    }
    d = make_spec_dict(**{**fields, **over})
    spec = spec_from_dict(d, "test")
    ex = ReplayExecutor(spec, CAPS, load_landscape(_landscape(tmp / "l.jsonl", truth)), seed=0)
    study = api.open_study(spec, caps=CAPS)
    api.search(spec, study, ex, trials=trials, caps=CAPS)
    return study, ex


def test_only_configs_that_may_still_win_are_measured_at_full_length(tmp_path: Path) -> None:
    # Batch 8 is far ahead of every other (1000 vs at most 160 items/s).
    truth = {1: 100.0, 2: 120.0, 4: 160.0, 8: 1000.0}
    study, ex = _run(tmp_path, truth, trials=8)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    measured = [t for t in trials if rec.pooled_from(t) is None and rec.metrics(t)]
    by_config: dict[str, list[Any]] = {}
    for t in measured:
        by_config.setdefault(config_key(rec.trial_config(t)), []).append(t)
    assert len(by_config) == 4  # every config was looked at
    # Each config's first block is a first look; a config's later blocks are full-length.
    for ts in by_config.values():
        assert rec.is_first_look(ts[0]) and not any(rec.is_first_look(t) for t in ts[1:])
    best = by_config[config_key({**rec.trial_config(measured[0]), "batch_size": 8})]
    assert len(best) >= 2 and rec.marker(best[1], rec.DRAWN) == "promotion"
    # Once batch 8 was seen, a config six times slower is never promoted (before it, the leader
    # of the moment may be).
    after_best = [ts for ts in by_config.values() if ts[0].number > best[0].number]
    assert after_best  # (seed 1 looks at batch 8 second)
    assert all(len(ts) == 1 for ts in after_best), [[t.number for t in ts] for ts in after_best]
    promoted = {config_key(rec.trial_config(t)) for t in trials if rec.marker(t, rec.DRAWN) == "promotion"}
    assert not promoted & {config_key(rec.trial_config(ts[0])) for ts in after_best}
    # The replay served first looks from short blocks only, and what it served cost less than a
    # trial-length block per measured trial.
    looks = [s for s in ex.served if s[2] == "short"]
    assert len(looks) == 4
    assert ex.measure_s < 0.4 * len(measured)


def test_without_first_look_s_every_new_config_is_measured_at_full_length(tmp_path: Path) -> None:
    truth = {1: 100.0, 2: 120.0, 4: 160.0, 8: 1000.0}
    study, ex = _run(tmp_path, truth, trials=4, measurement={**MEASUREMENT, "first_look_s": None})
    assert not [s for s in ex.served if s[2] == "short"]
    assert not [t for t in study.get_trials(deepcopy=False) if rec.is_first_look(t)]


def test_autotune_run_looks_first_then_measures_the_leaders_at_full_length(tmp_path: Path) -> None:
    """What a user types: a real run on a real model, each new config's first block a first look."""
    import subprocess
    import sys

    import optuna
    from helpers import looked_then_promoted, write_spec

    spec = write_spec(
        tmp_path,
        measurement={**MEASUREMENT, "min_time_s": 0.2, "max_time_s": 0.5, "first_look_s": 0.05},
        budget={"trials": 3},
        pick={"rounds": 0},
    )
    db = tmp_path / "s.db"
    cmd = [sys.executable, "-m", "autotuner.cli", "run", str(spec), "--storage", f"sqlite:///{db}"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(first look" in out.stdout
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    seen = looked_then_promoted(study.get_trials(deepcopy=False), 0.2)
    assert len(seen) == 3  # the budget's three trials are three configs looked at


def test_the_synthetic_landscape_answers_first_looks_without_moving_its_rounds() -> None:
    """The 6,930-config construction's short blocks (fitted on tiny5's) come from a generator of
    their own: the trial-length rounds, which the figures without first looks rest on, are the
    same with or without them."""
    import sys

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    from synthetic_landscape import generate

    c = json.loads((root / "benchmarks" / "landscapes" / "synthetic.json").read_text())
    assert c["short"]["fitted_from"].endswith("tiny5.jsonl")
    with_short = generate(c)
    without = generate({k: v for k, v in c.items() if k != "short"})
    assert with_short.keys() == without.keys()
    for key, recs in with_short.items():
        full = [r for r in recs if r.get("fidelity") != "short"]
        assert full == without[key]
        short = [r for r in recs if r.get("fidelity") == "short"]
        if "metrics" in recs[0]:
            assert len(short) == c["short"]["rounds"]
            assert all(r["block_s"] == r["measure_s"] == c["short"]["block_s"] for r in short)
        else:
            assert not short  # a refusal has no blocks of either length


def test_an_interrupted_promotion_is_queued_again_as_a_promotion(tmp_path: Path) -> None:
    """A driver stopped mid-promotion: the retry is still a promotion, so the budget does not
    count it on the next run (a real SQLite study)."""
    import optuna

    from autotuner.search.estimates import uses_budget

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    config = {"backend": "torch-eager", "precision": "fp32", "batch_size": 2, "threads": 1}
    rec.queue(study, config, **{rec.REPEAT_OF: 0, rec.DRAWN: rec.PROMOTION})
    running = study.ask()
    assert rec.is_promotion(running)
    rec.interrupt(study, running, "stopped")
    retry = next(t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.WAITING)
    assert rec.is_promotion(retry) and retry.user_attrs[rec.RETRY_OF] == running.number
    assert not uses_budget(retry) and not uses_budget(study.get_trials(deepcopy=False)[0])
