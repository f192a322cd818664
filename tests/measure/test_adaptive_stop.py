"""Adaptive trial length: a block says why it stopped, and a config clearly out of the running
stops early (a real torch model, a real worker, a real study)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import FAST_MEASUREMENT, make_spec_dict, write_spec

from autotuner.api import spec_from_dict
from autotuner.measure import worker
from autotuner.measure.harness import HarnessSettings, measure_block
from autotuner.runners.base import Device

A = np.random.default_rng(0).standard_normal((96, 96))


def _step() -> object:
    return A @ A  # real work, well under a millisecond


def test_each_block_names_why_it_stopped() -> None:
    settled = measure_block(_step, HarnessSettings(min_iters=5, min_time_s=0.05, cv_target=10.0), 1)
    assert settled.stop_reason == "settled" and settled.metrics["unstable"] == 0.0
    timed_out = measure_block(
        _step,
        HarnessSettings(min_iters=5, max_iters=10**9, min_time_s=0.05, max_time_s=0.1, cv_target=0.0),
        1,
    )
    assert timed_out.stop_reason == "max-time" and timed_out.metrics["unstable"] == 1.0
    counted = measure_block(
        _step, HarnessSettings(min_iters=5, max_iters=20, min_time_s=5.0, cv_target=0.0), 1
    )
    assert counted.stop_reason == "max-iters" and counted.metrics["n_iterations"] == 20


def test_a_config_out_of_the_running_stops_early_with_a_real_measurement() -> None:
    # No iteration cap: on a fast CPU this step runs its 10,000 default iterations within max_time_s.
    settings = HarnessSettings(min_iters=5, max_iters=10**9, min_time_s=0.4, max_time_s=2.0, cv_target=0.0)
    full = measure_block(_step, settings, 4)
    # A floor a fifth above what this step does (not far above: that is the next test): the block
    # ends at its first check past min_iters and a quarter of min_time_s.
    floor = 1.2 * full.metrics["throughput_items_s"]
    cut = measure_block(_step, HarnessSettings(**{**settings.__dict__, "give_up_below_items_s": floor}), 4)
    assert full.stop_reason == "max-time" and cut.stop_reason == "out-of-running"
    assert cut.metrics["measure_s"] < 0.5 * full.metrics["measure_s"]
    assert cut.metrics["n_iterations"] >= settings.min_iters
    # Its figure is a real (shorter) measurement of its own samples, not a placeholder (a ratio
    # to the full block would depend on the machine's load).
    m = cut.metrics
    assert m["throughput_items_s"] == pytest.approx(4 * 1e3 / m["latency_mean_ms"], rel=1e-6)
    # A floor the config clears does not cut it short.
    kept = measure_block(_step, HarnessSettings(**{**settings.__dict__, "give_up_below_items_s": 1.0}), 4)
    assert kept.stop_reason == "max-time"


def _slow_step() -> None:
    time.sleep(0.02)  # a step of 20 ms: 50 items/s at one item a step


def test_a_config_far_out_of_the_running_ends_its_warm_up_at_once_and_its_block_after_two_steps() -> None:
    settings = HarnessSettings(warmup_iters=3, min_iters=8, min_time_s=0.04, max_time_s=10.0, cv_target=0.0)
    far = measure_block(
        _slow_step, HarnessSettings(**{**settings.__dict__, "give_up_below_items_s": 1000.0}), 1
    )
    assert far.stop_reason == "out-of-running" and far.metrics["n_iterations"] == 2
    assert far.metrics["warmup_s"] < 2 * 0.02  # one warm-up step of three
    # Below the floor but not far below (50 items/s, floor 60): the whole warm-up, min_iters steps.
    near = measure_block(
        _slow_step, HarnessSettings(**{**settings.__dict__, "give_up_below_items_s": 60.0}), 1
    )
    assert near.metrics["warmup_s"] >= 3 * 0.02 and near.metrics["n_iterations"] >= settings.min_iters
    assert near.stop_reason == "out-of-running"


def test_the_worker_reports_the_stop_reason_of_a_real_model() -> None:
    spec = spec_from_dict(
        make_spec_dict(measurement={**FAST_MEASUREMENT, "min_time_s": 0.4, "max_time_s": 1.0})
    )
    device = Device("cpu", tuple(sorted(os.sched_getaffinity(0))))
    config = {"backend": "torch-eager", "precision": "fp32", "batch_size": 2, "threads": 1}
    cut = worker.run_trial(spec, config, device, {}, give_up_below=1e12)
    assert cut.ok, cut.failure_message
    assert cut.info["stop_reason"] == "out-of-running"
    assert cut.metrics["measure_s"] < 0.4
    assert "accuracy_cosine" in cut.metrics  # the accuracy check still ran: the trial is whole
    race_block = worker.run_trial(spec, config, device, {}, block_s=0.05, give_up_below=1e12)
    assert race_block.info["stop_reason"] != "out-of-running"  # race blocks are never cut short


def test_the_stop_reason_is_stored_with_each_trial(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, budget={"trials": 3}, pick={"top_k": 1, "rounds": 2, "round_time_s": 0.05})
    db = tmp_path / "s.db"
    cmd = [sys.executable, "-m", "autotuner.cli", "run", str(spec), "--storage", f"sqlite:///{db}"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    reasons = [
        t.user_attrs["info"]["stop_reason"]
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE and "info" in t.user_attrs
    ]
    assert reasons and set(reasons) <= {"settled", "max-time", "max-iters", "out-of-running"}
