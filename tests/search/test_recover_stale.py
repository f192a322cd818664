"""A driver killed between its ask and its claim leaves a RUNNING trial that names no driver:
the next run still recovers it (a real SQLite study; only the grace period is shortened)."""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotuner.progress import Progress
from autotuner.search import driver
from autotuner.study import records as rec

CONFIG = {"backend": "torch-eager", "precision": "fp32", "batch_size": 2, "threads": 1}


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")


def test_a_trial_asked_but_never_claimed_is_recovered_and_its_queued_config_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "GRACE_S", 1.0)
    study = _study(tmp_path)
    study.enqueue_trial(CONFIG)
    orphan = study.ask()  # the dead driver's last step: popped from the queue, never claimed
    mine = study.ask()
    rec.claim(study, mine, {"host": socket.gethostname(), "pid": os.getpid()})  # a live driver's
    rec.heartbeat(study, [mine], time.time() + 60)  # ... beating through the wait
    out = io.StringIO()

    assert driver.recover_stale(study, Progress(out=out)) == 1

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[mine.number].state == TrialState.RUNNING  # a live driver's trial is left alone
    again = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in again] == [CONFIG]  # the queued config, not lost
    assert "waiting" in out.getvalue() and "recovered 1 trial(s)" in out.getvalue()


def test_a_trial_its_live_driver_claims_during_the_wait_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "GRACE_S", 1.0)
    study = _study(tmp_path)
    trial = study.ask()
    live = {"host": socket.gethostname(), "pid": os.getpid()}

    def claimed_meanwhile(seconds: float) -> None:
        assert 0 < seconds <= 1.5
        rec.claim(study, trial, live)
        rec.heartbeat(study, [trial], time.time() + 60)

    assert driver.recover_stale(study, Progress(quiet=True), sleep=claimed_meanwhile) == 0
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING
