"""Drills: the database goes away mid-run; a driver dies holding a measured result."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from helpers import fixed_time, write_spec
from optuna.trial import TrialState

from autotuner.api import run
from autotuner.progress import Progress
from autotuner.result import TrialResult
from autotuner.study.journal import Journal

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class Lines(Progress):
    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)


def test_a_journaled_result_of_a_dead_driver_is_stored_not_rerun(in_tmp: Path) -> None:
    spec = write_spec(in_tmp, budget={"trials": 2})
    run(spec, trials=1, progress=Progress(quiet=True))
    url = "sqlite:///studies/t.db"
    study = optuna.load_study(study_name="t", storage=url)
    # A driver measured trial #1, journaled the result, and died before writing it.
    trial = study.ask()
    trial.set_user_attr(
        "config", {"backend": "torch-eager", "precision": "fp32", "batch_size": 2, "threads": 1}
    )
    measured = TrialResult(
        ok=True,
        metrics={
            "throughput_items_s": 123.0,
            "latency_p95_ms": 4.5,
            "accuracy_cosine": 1.0,
            "latency_p50_ms": 4.0,
        },
    )
    Journal("t", url).add(trial._trial_id, trial.number, measured)
    progress = Lines()
    run(spec, progress=progress)
    t1 = optuna.load_study(study_name="t", storage=url).trials[1]
    assert t1.state == TrialState.COMPLETE and t1.values == [123.0, 4.5]
    assert t1.user_attrs.get("failure_class") is None
    assert any("stored 1 measured result" in line for line in progress.lines)
    assert not Journal("t", url).path.exists()


def _pg_control() -> list[str] | None:
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"] if versions else None


def _pg_up() -> bool:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(PG).connect():
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(
    _pg_control() is None or not _pg_up(),
    reason="needs the local PostgreSQL server and root to stop and start it",
)
def test_postgresql_stopped_mid_run_the_driver_waits_and_loses_nothing(in_tmp: Path) -> None:
    ctl = _pg_control()
    assert ctl is not None
    name = f"outage-{uuid.uuid4().hex[:8]}"
    spec = write_spec(
        in_tmp,
        budget={"trials": 5},
        study=name,
        measurement=fixed_time(1.5),
    )
    stopped = threading.Event()

    def outage() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                trials = optuna.load_study(study_name=name, storage=PG).trials
            except Exception:  # noqa: BLE001 - not created yet
                continue
            if any(t.state == TrialState.COMPLETE for t in trials) and any(
                t.state == TrialState.RUNNING for t in trials
            ):
                break
        subprocess.run([*ctl, "stop", "-m", "fast"], check=True, capture_output=True)
        stopped.set()
        time.sleep(6)  # the running trial ends while the database is down
        subprocess.run([*ctl, "start"], check=True, capture_output=True)

    t = threading.Thread(target=outage, daemon=True)
    progress = Lines()
    t.start()
    try:
        run(spec, storage=PG, progress=progress)
    finally:
        t.join(timeout=60)
        if not _pg_up():
            subprocess.run([*ctl, "start"], capture_output=True)
    try:
        assert stopped.is_set()
        retries = [line for line in progress.lines if "unreachable" in line and "retrying in" in line]
        assert retries, progress.lines
        # Said in words (what happened to the connection), not Optuna's "invalid data in the commit".
        assert not [line for line in retries if "invalid data" in line or "max length" in line], retries
        assert all(
            any(
                w in line
                for w in (
                    "refused",
                    "closed the connection",
                    "ended the connection",
                    "shutting down",
                    "starting up",
                )
            )
            for line in retries
        ), retries
        study = optuna.load_study(study_name=name, storage=PG)
        assert len(study.trials) == 5
        assert not [tr for tr in study.trials if tr.state == TrialState.RUNNING]
        for tr in study.trials:
            if tr.state == TrialState.COMPLETE:
                assert tr.user_attrs["latency_p50_ms"] > 0
        assert sum(tr.state == TrialState.COMPLETE for tr in study.trials) >= 4
    finally:
        optuna.delete_study(study_name=name, storage=PG)


@pytest.mark.skipif(not _pg_up(), reason="no PostgreSQL server at 127.0.0.1:5432")
def test_two_drivers_share_one_budget_in_postgresql(in_tmp: Path) -> None:
    import sys

    name = f"shared-{uuid.uuid4().hex[:8]}"
    # Trials long enough that both drivers are surely running before the budget is spent.
    spec = write_spec(in_tmp, budget={"trials": 6}, study=name, measurement=fixed_time(2.0))
    cmd = [sys.executable, "-m", "autotuner.cli", "run", str(spec), "--storage", PG]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=in_tmp)
        for _ in range(2)
    ]
    try:
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        study = optuna.load_study(study_name=name, storage=PG)
        from autotuner.search.estimates import uses_budget

        counted = [t for t in study.trials if uses_budget(t)]
        assert len(counted) == 6, "together the drivers measured exactly the budget"
        assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        owners = {t.system_attrs["autotune:driver"]["pid"] for t in counted}
        assert len(owners) == 2, "both drivers ran trials"
    finally:
        optuna.delete_study(study_name=name, storage=PG)


def test_a_journal_never_writes_into_another_database(tmp_path: Path, monkeypatch) -> None:
    """The same study name and relative URL in two folders are two databases: a pending entry of
    one must not land in the other."""
    from autotuner.study.journal import replay

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    url = "sqlite:///t.db"
    study_a = optuna.create_study(study_name="t", storage=url, directions=["maximize"])
    trial = study_a.ask()
    Journal("t", url).add(trial._trial_id, trial.number, TrialResult(ok=True, metrics={"x": 1.0}))
    monkeypatch.chdir(tmp_path / "b")
    study_b = optuna.create_study(study_name="t", storage=url, directions=["maximize"])
    study_b.ask()  # same trial id and number as in folder a, other database
    told: list[int] = []
    assert replay(Journal("t", url), study_b, lambda tid, res: told.append(tid), lambda s: None) == 0
    assert told == []
    monkeypatch.chdir(tmp_path / "a")
    assert replay(Journal("t", url), study_a, lambda tid, res: told.append(tid), lambda s: None) == 1
