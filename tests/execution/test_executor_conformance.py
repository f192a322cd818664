"""What every executor promises the driver, asserted the same way of each (as Optuna runs one
storage suite over STORAGE_MODES): local (a worker process on this machine), replay (a recorded
landscape, benchmarks/landscapes/tiny.jsonl: nothing is launched) and ray (a real local Ray
cluster of two CPUs, one for the module).

- a trial completes and is stored in the study with its metrics;
- a failing trial is stored FAIL with its classified reason;
- `slots` is how many trials the executor runs at once, and the driver never runs more;
- stopping (the driver's stop_workers, then close) leaves no worker behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import FAST_MEASUREMENT, write_spec
from optuna.trial import FrozenTrial, TrialState

from autotuner import api
from autotuner.execution import Executor, TrialRequest, make_executor, stop_workers
from autotuner.execution.replay import ReplayExecutor, load_landscape
from autotuner.spec.schema import Spec

LANDSCAPE = Path(__file__).parents[2] / "benchmarks" / "landscapes" / "tiny.jsonl"
RAY_CPUS = 2
MISBEHAVING = {
    "model": {"factory": "models_for_tests:misbehaving"},
    "inputs": [{"name": "x", "shape": ["batch", 16]}],
    "objectives": [{"metric": "latency_p50_ms", "direction": "minimize"}],
    "constraints": [],
}
ONE_CONFIG = {"backend": "torch-eager", "precision": "fp32", "batch_size": 1, "threads": 1}


def _space(**over: Any) -> dict[str, list[Any]]:
    return {k: [v] for k, v in ONE_CONFIG.items()} | over


@dataclass
class Mode:
    name: str
    make: Callable[[Spec, dict[str, Any]], Executor]
    slots: int  # the trials it runs at once for a space of one-thread CPU trials
    refuses_batch_3: str  # the reason a trial of the misbehaving model at batch 3 fails with


@pytest.fixture(scope="module")
def pidfile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the misbehaving model's batch-7 trial says who runs it (set before Ray starts, so that
    Ray's workers have it too)."""
    path = tmp_path_factory.mktemp("pids") / "pids"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_TEST_PIDFILE", str(path))
        yield path


@pytest.fixture(scope="module")
def ray_cluster(pidfile: Path) -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
    affinity = os.sched_getaffinity(0)
    ray.init(
        address="local",
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        configure_logging=False,
    )
    yield ray
    ray.shutdown()
    os.sched_setaffinity(0, affinity)


def _local() -> Mode:
    return Mode("local", lambda spec, caps: make_executor("local", spec, caps), 1, "refuses batches of three")


def _replay() -> Mode:
    landscape = load_landscape(LANDSCAPE)

    def make(spec: Spec, caps: dict[str, Any]) -> Executor:
        return ReplayExecutor(spec, caps, landscape, seed=0)

    return Mode("replay", make, 1, "config not in the recorded landscape")


def _ray() -> Mode:
    # The module's cluster is joined, not started: close() leaves it running for the next test.
    return Mode(
        "ray", lambda spec, caps: make_executor("ray", spec, caps), RAY_CPUS, "refuses batches of three"
    )


@pytest.fixture(params=["local", "replay", "ray"])
def mode(request: pytest.FixtureRequest, pidfile: Path) -> Mode:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        return _ray()
    return _local() if request.param == "local" else _replay()


def _spec(directory: Path, **over: Any) -> Spec:
    over.setdefault("sampler", {"type": "grid"})
    return api.check_model(api.load_spec(write_spec(directory, **over)))


def _search(mode: Mode, spec: Spec, caps: dict[str, Any], trials: int) -> tuple[list[FrozenTrial], int]:
    """The real driver on a real SQLite study through the mode's executor; the trials stored and
    the executor's slots."""
    with mode.make(spec, caps) as ex:
        study = api.open_study(spec, caps=caps)
        api.search(spec, study, ex, trials=trials, caps=caps)
        slots = ex.slots
    stored = optuna.load_study(study_name=spec.study_name, storage="sqlite:///studies/t.db").trials
    return stored, slots


def test_a_trial_completes_and_is_stored_with_its_metrics(mode: Mode, in_tmp: Path, caps: dict) -> None:
    spec = _spec(in_tmp, space=_space())
    (trial,), _ = _search(mode, spec, caps, trials=1)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("failure_message")
    assert trial.user_attrs["config"] == ONE_CONFIG
    assert trial.user_attrs["latency_p50_ms"] > 0 and trial.user_attrs["throughput_items_s"] > 0
    assert trial.user_attrs["accuracy_cosine"] >= 0.99
    assert trial.values == [trial.user_attrs["throughput_items_s"], trial.user_attrs["latency_p95_ms"]]


def test_a_failing_trial_is_stored_fail_with_its_reason(mode: Mode, in_tmp: Path, caps: dict) -> None:
    spec = _spec(
        in_tmp,
        **MISBEHAVING,
        space=_space(batch_size=[3]),
    )
    (trial,), _ = _search(mode, spec, caps, trials=1)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["failure_class"] == "error"
    assert mode.refuses_batch_3 in trial.user_attrs["failure_message"]


def test_the_driver_runs_at_most_slots_trials_at_once(mode: Mode, in_tmp: Path, caps: dict) -> None:
    # One trial more than the executor's slots; every config runs on one thread.
    sizes = [1, 2, 4, 8, 16, 32][: mode.slots + 1]
    spec = _spec(in_tmp, space=_space(batch_size=sizes))
    trials, slots = _search(mode, spec, caps, trials=len(sizes))
    assert slots == mode.slots
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(sizes)
    assert sorted(t.user_attrs["config"]["batch_size"] for t in trials) == sizes
    # By the study's own records: no moment holds more running trials than there are slots.
    starts = sorted(t.datetime_start for t in trials)
    for at in starts:
        running = [t for t in trials if t.datetime_start <= at < t.datetime_complete]
        assert len(running) <= slots, [(t.number, t.datetime_start, t.datetime_complete) for t in trials]


def test_stopping_leaves_no_worker(mode: Mode, in_tmp: Path, caps: dict, pidfile: Path) -> None:
    """The driver stopping mid-trial: stop_workers() then close(). The local executor kills its
    worker at once; a Ray task's worker ends by its own deadline, which close() waits for. Either
    way, once close() returns the trial has an answer and its worker is gone."""
    pidfile.unlink(missing_ok=True)
    spec = _spec(
        in_tmp,
        **MISBEHAVING,
        space=_space(batch_size=[7]),
        measurement={**FAST_MEASUREMENT, "trial_timeout_s": 30},
    )
    config = {**ONE_CONFIG, "batch_size": 7}
    ex = mode.make(spec, caps)
    try:
        future = ex.submit(TrialRequest(0, config))
        deadline = time.monotonic() + 30  # a bound on a failure: the worker writes it in seconds
        while mode.name != "replay" and not pidfile.exists() and not future.done():
            assert time.monotonic() < deadline, "the worker never reached the model"
            time.sleep(0.2)
    finally:
        stop_workers()
        ex.close()
    assert future.done() and not future.result().ok
    if mode.name == "replay":
        assert not pidfile.exists(), "replay launches nothing"
        return
    assert pidfile.exists(), future.result()
    worker = int(pidfile.read_text().split()[0])
    assert not _running(worker), f"worker {worker} outlived close()"


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
