"""Nothing outlives a trial: drills that cause each leftover for real and look for it after.

- a grandchild that the model starts (a real `sleep`), after a normal exit and after a raise;
- a worker whose driver is killed with SIGKILL while the trial hangs, and its grandchild;
- a worker nobody ends: it ends itself at its deadline;
- the trial folders of a killed driver, and the half-written output of a killed writer: the next
  run removes them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from helpers import FAST_MEASUREMENT, write_spec
from optuna.trial import TrialState

from autotuner import watchdog
from autotuner.api import run
from autotuner.execution.process import TRIAL_DIR_PREFIX
from autotuner.progress import Progress

QUIET = Progress(quiet=True)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _processes() -> dict[int, list[str]]:
    """Every process on this machine: pid -> its argv (read from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            out[int(d.name)] = [a.decode(errors="replace") for a in argv if a]
    return out


def _sleepers(seconds: str) -> list[int]:
    return [pid for pid, argv in _processes().items() if argv == ["sleep", seconds]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead: only its entry waits for a parent to read it.
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _unique_sleep() -> str:
    return str(900000 + random.randrange(99999))


def _misbehaving(in_tmp: Path, batches: list[int], **extra: object) -> Path:
    return write_spec(
        in_tmp,
        model={"factory": "models_for_tests:misbehaving"},
        inputs=[{"name": "x", "shape": ["batch", 16]}],
        space={"backend": ["torch-eager"], "batch_size": batches, "threads": [1]},
        objectives=[{"metric": "throughput_items_s", "direction": "maximize"}],
        constraints=[],
        sampler={"type": "grid"},
        budget={"trials": len(batches)},
        **extra,
    )


def test_a_grandchild_never_outlives_its_trial(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seconds = _unique_sleep()
    started = in_tmp / "grandchildren"
    monkeypatch.setenv("AUTOTUNE_TEST_GRANDCHILD", seconds)
    monkeypatch.setenv("AUTOTUNE_TEST_GRANDCHILD_LOG", str(started))
    spec = _misbehaving(in_tmp, [1, 3])  # 1 ends normally, 3 raises: both started a `sleep`
    run(spec, progress=QUIET)
    # Each trial's worker did start its grandchild (a test of their end needs them to begin).
    logged = [tuple(map(int, line.split())) for line in started.read_text().splitlines()]
    assert {batch for batch, _ in logged} >= {1, 3}, logged  # other batches (accuracy) may add theirs
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    by_batch = {t.user_attrs["config"]["batch_size"]: t for t in study.trials}
    assert by_batch[1].state == TrialState.COMPLETE
    assert by_batch[3].user_attrs["failure_class"] == "error"
    # The race re-measures the winner in more workers; each started its own sleep. None is left:
    # no pid logged is a live `sleep N` (a pid reused since by another process does not count).
    assert _sleepers(seconds) == []
    assert [pid for _, pid in logged if _alive(pid) and _processes().get(pid) == ["sleep", seconds]] == []


def test_kill_9_of_the_driver_ends_its_hanging_worker_and_the_next_run_sweeps(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds = _unique_sleep()
    pidfile = in_tmp / "pids"
    spec = _misbehaving(in_tmp, [7], measurement={**FAST_MEASUREMENT, "trial_timeout_s": 20})
    env = {**os.environ, "AUTOTUNE_TEST_GRANDCHILD": seconds, "AUTOTUNE_TEST_PIDFILE": str(pidfile)}
    log = in_tmp / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "autotuner.cli", "run", str(spec)], stdout=out, stderr=out, env=env
        )
    try:
        deadline = time.monotonic() + 90
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pidfile.exists(), log.read_text()
        worker, parent = map(int, pidfile.read_text().split())
        # A warm worker (the default) is a fork of the executor's zygote, itself the driver's child.
        zygote = [parent] if parent != driver.pid else []
        assert not zygote or "autotuner.execution.zygote" in _processes()[parent], _processes()[parent]
        assert not zygote or _ppid(parent) == driver.pid
        grandchildren = _sleepers(seconds)
        assert len(grandchildren) == 1
        left = list(Path(tempfile.gettempdir()).glob(f"{TRIAL_DIR_PREFIX}{driver.pid}-*"))
        assert left, "the worker runs in a folder named for its driver"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # The worker's watcher reads end of file on the driver's pipe at once: not 20 s later.
        assert _gone_within([worker, *grandchildren, *zygote], 5.0), _processes().get(worker)
    finally:
        if driver.poll() is None:
            driver.kill()
        print(log.read_text())
    assert all(d.exists() for d in left), "kill -9 leaves the folder (nothing ran to remove it)"

    # The next run, of any spec, removes the folders of drivers that are gone.
    monkeypatch.delenv("AUTOTUNE_TEST_PIDFILE", raising=False)
    again = _misbehaving(in_tmp, [1], study="next")
    run(again, progress=QUIET)
    assert not any(d.exists() for d in left)


def test_a_worker_nobody_ends_ends_itself_at_its_deadline(tmp_path: Path, in_tmp: Path) -> None:
    """The executor's process stays alive but never kills the worker: the watcher does."""
    from autotuner.execution.local import LocalExecutor
    from autotuner.runners.binding import bind
    from autotuner.spec.loading import read_spec

    spec = bind(read_spec(_misbehaving(in_tmp, [4])))  # batch 4 hangs for an hour
    payload = LocalExecutor(spec, {"cpu_cores": 1}).payload_for(
        {"backend": "torch-eager", "batch_size": 4, "threads": 1}
    )
    req, res = tmp_path / "request.json", tmp_path / "result.json"
    req.write_text(json.dumps(payload))
    read, write = os.pipe()
    started = time.monotonic()
    worker = subprocess.Popen(
        [sys.executable, "-m", "autotuner.measure.worker", str(req), str(res), "--watch", str(read), "1"],
        pass_fds=(read,),
        start_new_session=True,
    )
    os.close(read)
    try:
        code = worker.wait(timeout=watchdog.GRACE_S + 30)
    finally:
        os.close(write)
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert time.monotonic() - started >= 1 + watchdog.GRACE_S - 0.5
    assert not res.exists()


def test_a_killed_writer_leaves_a_temporary_file_that_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "t.html"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from autotuner.files import atomic_write;"
            "atomic_write(Path(sys.argv[1]), lambda t: (Path(t).write_text('half'), time.sleep(600)))",
            str(target),
        ]
    )
    deadline = time.monotonic() + 30
    while not list(target.parent.glob(".t.html.*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    stale = list(target.parent.glob(".t.html.*"))
    assert len(stale) == 1 and f"-{writer.pid}." in stale[0].name
    assert not target.exists()

    from autotuner.files import atomic_write_text

    atomic_write_text(target, "whole")
    assert target.read_text() == "whole"
    assert list(target.parent.glob(".t.html.*")) == []
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
