"""Foreign load, caused for real: another process spinning on the trial's core while it measures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import write_spec
from optuna.trial import TrialState

from autotuner.api import run
from autotuner.measure.load import LoadMeter
from autotuner.progress import Progress
from autotuner.search.estimates import uses_budget

SPIN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"
# Spins until the study holds a trial flagged under load (or 60 s), then stops: the repeat is clean.
SPIN_UNTIL_FLAGGED = """
import sqlite3, time
t = time.time()
while time.time() - t < 60:
    for _ in range(200000):
        pass
    try:
        db = sqlite3.connect("file:studies/t.db?mode=ro", uri=True, timeout=0.1)
        hit = db.execute("select count(*) from trial_user_attributes where value_json like '%under-load%'")
        if hit.fetchone()[0]:
            break
        db.close()
    except sqlite3.Error:
        pass
"""


def _spinner(core: int, seconds: float) -> subprocess.Popen[bytes]:
    """A busy loop pinned to one core, in a session of its own (not the trial's)."""
    return subprocess.Popen(
        ["taskset", "-c", str(core), sys.executable, "-c", SPIN.format(s=seconds)], start_new_session=True
    )


def test_the_meter_tells_own_work_from_other_work() -> None:
    core = sorted(os.sched_getaffinity(0))[0]
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        m = LoadMeter()
        readings = []
        for _ in range(3):  # on a shared machine another process may take this core for a while
            m.start()
            t = time.time()
            while time.time() - t < 0.5:
                pass
            readings.append(m.stop())
            if readings[-1] < 0.1:
                break
        assert min(readings) < 0.1, f"the process's own busy time is not foreign: {readings}"
        p = _spinner(core, 1.5)
        time.sleep(0.2)
        m.start()
        time.sleep(0.8)
        foreign = m.stop()
        p.wait()
        assert foreign > 0.7, f"a process spinning on our core reads as {foreign:.2f} cores"
    finally:
        os.sched_setaffinity(0, old)


@pytest.mark.skipif(not Path("/usr/bin/taskset").exists(), reason="needs taskset (util-linux)")
def test_a_trial_under_foreign_load_is_kept_and_measured_again(in_tmp: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    # One config, one thread: the worker is pinned to the first core; the spinner sits there
    # during the first trial only, so the repeat is clean.
    spec = write_spec(
        in_tmp,
        space={"backend": "torch-eager", "precision": "fp32", "batch_size": [1], "threads": [1]},
        budget={"trials": 1},
        pick={"rounds": 0},
        measurement={
            "warmup_iters": 1,
            "min_iters": 5,
            "min_time_s": 1.0,
            "max_time_s": 1.0,
            "trial_timeout_s": 120,
            "max_foreign_load": 0.3,
        },
    )
    spinner = subprocess.Popen(
        ["taskset", "-c", str(cores[0]), sys.executable, "-c", SPIN_UNTIL_FLAGGED], start_new_session=True
    )
    try:
        out = run(spec, progress=Progress(quiet=True))
    finally:
        spinner.kill()
        spinner.wait()
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    loaded = [t for t in study.trials if t.user_attrs.get("failure_class") == "under-load"]
    clean = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert loaded, "the trial measured beside the spinner is flagged"
    assert all(t.state == TrialState.FAIL and t.user_attrs["foreign_load"] > 0.3 for t in loaded)
    assert all(t.user_attrs["throughput_items_s"] > 0 for t in loaded), "what it measured is kept"
    assert sum(1 for t in study.trials if uses_budget(t)) == 1, "the repeats cost no budget"
    assert len(clean) == 1 and clean[0].user_attrs["foreign_load"] <= 0.3, "the repeat ran clean"
    assert clean[0].user_attrs.get("repeat_of") == loaded[-1].number
    assert out.pick is not None
