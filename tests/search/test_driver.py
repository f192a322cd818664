"""The driver and the study: real SQLite files, the real PostgreSQL server, real workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import fixed_time, run_logged, show_log, wait_for_trials, write_spec
from optuna.trial import TrialState

from autotuner.api import run
from autotuner.metrics import HARNESS_METRICS
from autotuner.progress import Progress

QUIET = Progress(quiet=True)
MEASURED = list(HARNESS_METRICS)


def _study(name: str = "t", url: str = "sqlite:///studies/t.db") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_run_stores_everything_and_rerun_resumes(in_tmp: Path) -> None:
    spec = write_spec(in_tmp)
    out = run(spec, progress=QUIET)
    assert (in_tmp / "studies" / "t.db").exists()
    assert out.best_config_path == Path("reports/t.best.yaml") and out.best_config_path.exists()
    study = _study()
    first = {t.number: t.datetime_complete for t in study.trials}
    assert len(first) == 4
    assert study.user_attrs["spec"]["name"] == "t"
    assert study.user_attrs["environment"]["cpu_cores"] >= 1
    assert study.user_attrs["autotune_version"]
    for t in study.trials:
        assert t.state.is_finished()
        assert set(t.user_attrs["config"]) >= {"backend", "precision", "batch_size", "threads"}
        if t.state == TrialState.COMPLETE:
            assert set(MEASURED) <= set(t.user_attrs)
            assert "accuracy_cosine >= 0.99" in t.constraints
            assert len(t.user_attrs["latency_samples_ms"]) > 0
    best = yaml.safe_load(out.best_config_path.read_text())
    assert set(best) >= {
        "params",
        "deploy",
        "metrics",
        "constraints",
        "choice",
        "environment",
        "provenance",
        "remeasure_command",
    }
    winner = study.trials[best["provenance"]["trial"]]
    assert best["params"] == winner.user_attrs["config"]
    assert best["constraints"][0]["satisfied"] is True
    assert best["remeasure_command"].startswith("autotune bench ")

    run(spec, trials=6, progress=QUIET)
    study = _study()
    assert len(study.trials) == 6
    assert {t.number: t.datetime_complete for t in study.trials[:4]} == first


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigkill_mid_run_then_rerun_reaches_budget_with_nothing_running(in_tmp: Path, executor: str) -> None:
    if executor == "ray":
        pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
    spec = write_spec(
        in_tmp,
        budget={"trials": 5},
        measurement=fixed_time(1.5),
    )
    cmd = [sys.executable, "-m", "autotuner.cli", "run", str(spec), "--executor", executor]
    log = in_tmp / "drivers.log"
    try:
        proc = run_logged(cmd, log)
        wait_for_trials(log, proc, finished=2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = _study().trials
        running = [t for t in killed if t.state == TrialState.RUNNING]
        assert running, "the driver was killed while a trial ran"
        finished_before = {t.number: t.datetime_complete for t in killed if t.state.is_finished()}

        again = run_logged(cmd, log)
        assert again.wait(timeout=300) == 0
        study = _study()
        assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        replayed = re.search(
            r"stored (\d+) measured result\(s\) kept in \S+ by a driver that stopped", log.read_text()
        )
        for r in running:
            stale = study.trials[r.number]
            if stale.state == TrialState.COMPLETE:
                # Its worker finished and the killed driver journaled the result but had not stored
                # it yet: the rerun stores it from the journal (no measurement is lost) and says so.
                assert replayed and int(replayed.group(1)) >= 1, log.read_text()
                continue
            assert stale.state == TrialState.FAIL and stale.user_attrs["failure_class"] == "interrupted"
            retry = [t for t in study.trials if t.user_attrs.get("retry_of") == stale.number]
            chosen = stale.params or stale.system_attrs.get("fixed_params") or {}
            if chosen:
                # Killed mid-sampling (Ray samples the next trial while others run), a trial holds
                # part of its config; killed before sampling a queued one (the covering design's),
                # all of it: the retry keeps that and samples the rest.
                assert len(retry) == 1
                assert {k: retry[0].params[k] for k in chosen} == chosen
            else:  # a fresh trial killed between ask and sample: nothing chosen, nothing to retry
                assert retry == []
        counted = [t for t in study.trials if t.user_attrs.get("failure_class") != "interrupted"]
        assert len(counted) == 5
        # No finished trial was measured again.
        assert {n: study.trials[n].datetime_complete for n in finished_before} == finished_before
    finally:
        show_log(log)


def test_resumed_sampler_does_not_replay_its_first_configs(in_tmp: Path) -> None:
    spec = write_spec(
        in_tmp,
        budget={"trials": 3},
        space={"batch_size": {"low": 1, "high": 64}, "threads": [1], "backend": ["onnxruntime-cpu"]},
    )
    run(spec, progress=QUIET)
    run(spec, trials=6, progress=QUIET)
    sizes = [t.params["batch_size"] for t in _study().trials]
    assert sizes[3:] != sizes[:3]


def _postgres_url() -> str:
    return os.environ.get("AUTOTUNE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_up() -> bool:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(_postgres_url()).connect():
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _postgres_up(), reason="no PostgreSQL server at 127.0.0.1:5432")
def test_study_in_postgresql(in_tmp: Path) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    spec = write_spec(in_tmp, budget={"trials": 2}, study=name)
    url = _postgres_url()
    try:
        out = run(spec, storage=url, progress=QUIET)
        study = _study(name, url)
        assert len(study.trials) == 2 and study.user_attrs["spec"]["study"] == name
        assert not (in_tmp / "studies").exists()
        assert out.best_config_path is not None
        assert yaml.safe_load(out.best_config_path.read_text())["provenance"]["storage"].startswith(
            "postgresql"
        )
    finally:
        optuna.delete_study(study_name=name, storage=url)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_and_the_trial_runs_again(in_tmp: Path) -> None:
    spec = write_spec(
        in_tmp,
        budget={"trials": 6},
        measurement=fixed_time(5.0),
    )
    cmd = [sys.executable, "-m", "autotuner.cli", "run", str(spec)]
    log = in_tmp / "driver.out"
    with open(log, "wb") as out:
        # SIGINT as a terminal delivers it: a shell without job control starts background jobs
        # (a CI runner's, nohup ... &) with SIGINT ignored, and an ignored signal is inherited.
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
        )
    err = ""
    try:
        wait_for_trials(log, proc, finished=1)  # the second trial runs (each measures 5 s)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1] == "autotune: interrupted; run the same command again to resume"
        study = _study()
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]
        stopped = [t for t in study.trials if t.user_attrs.get("failure_class") == "interrupted"]
        assert len(stopped) == 1
        waiting = [t for t in study.trials if t.state == TrialState.WAITING]
        assert [t.user_attrs.get("retry_of") for t in waiting] == [stopped[0].number]
    finally:
        if proc.poll() is None:
            proc.kill()
        show_log(log)
        print(f"---- stderr ----\n{err}")


def test_wall_time_budget_stops_asking(in_tmp: Path) -> None:
    """Nothing is asked once the wall time is spent. Each trial measures for 1.5 s, past the 1 s
    budget, so every trial the search asked for was asked in the first second (as many as there
    are slots at once), not the 6 trials of the budget: how fast a trial starts does not matter."""
    from autotuner.search.estimates import uses_budget

    spec = write_spec(
        in_tmp,
        budget={"trials": 6, "wall_time_s": 1},
        measurement=fixed_time(1.5),
        pick={"rounds": 0},
    )
    run(spec, progress=QUIET)
    searched = [t for t in _study().trials if uses_budget(t)]
    starts = sorted(t.datetime_start.timestamp() for t in searched if t.datetime_start)
    assert 1 <= len(searched) < 6, len(searched)
    assert starts[-1] - starts[0] < 1.0, [round(s - starts[0], 2) for s in starts]


def test_the_driver_starts_with_a_covering_design_then_samples_then_refines(in_tmp: Path) -> None:
    """The three phases of a search, in one real run: the covering start (queued by the driver),
    the sampler's own draws, and the last refine_share of the budget around the leaders. Each
    trial records how it was drawn."""
    from autotuner.search.estimates import uses_budget

    spec = write_spec(
        in_tmp,
        model={"factory": "models_for_tests:mlp"},
        inputs=[{"name": "x", "shape": ["batch", 16]}],
        space={"backend": ["torch-eager"], "batch_size": [1, 2, 4, 8, 16, 32], "threads": [1, 2]},
        objectives=[{"metric": "throughput_items_s", "direction": "maximize"}],
        constraints=[],
        sampler={"type": "random", "n_startup_trials": 3, "refine_share": 0.25},
        budget={"trials": 8},
        pick={"rounds": 0},
        seed=3,
    )
    run(spec, progress=QUIET)
    measured = [t for t in _study().trials if uses_budget(t)]
    drawn = [t.user_attrs.get("drawn", "sampler") for t in measured]
    # 3 design trials, then the sampler (where it proposes a repeat twice in a row, the driver
    # draws an unmeasured config itself), then ceil(0.25 * 8) = 2 refinements.
    assert drawn[:3] == ["initial design"] * 3 and drawn[6:] == ["refinement"] * 2, drawn
    assert set(drawn[3:6]) <= {"sampler", "unmeasured"} and "sampler" in drawn[3:6], drawn
    configs = [t.user_attrs["config"] for t in measured]
    design = configs[:3]
    assert len({tuple(sorted(c.items())) for c in design}) == 3
    assert {c["threads"] for c in design} == {1, 2}, "the start covers each value of a parameter"
    # A refinement measures a config not measured before it (a neighbour of a leader, or the
    # refinement model's pick), never one the search already has.
    for i in (6, 7):
        assert configs[i] not in configs[:i], (i, configs)
