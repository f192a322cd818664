"""The Ray executor on a real local Ray cluster, and on a simulated two-node cluster."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
from helpers import FAST_MEASUREMENT, fixed_time, looked_then_promoted, write_spec
from optuna.trial import TrialState
from ray_nodes import parent_of

from autotuner.api import run
from autotuner.progress import Progress

ray = pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
QUIET = Progress(quiet=True)


@pytest.fixture(autouse=True)
def _no_ray_left() -> None:
    yield
    if ray.is_initialized():
        ray.shutdown()


def _study() -> optuna.Study:
    return optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")


def test_trials_run_side_by_side_on_disjoint_cores(in_tmp: Path) -> None:
    spec = write_spec(in_tmp, budget={"trials": 4}, measurement=fixed_time(1.0))
    out = run(spec, executor="ray", progress=QUIET)
    study = _study()
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(study.trials) == 4 and len(done) >= 3 and out.pick is not None
    spans = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), "no two trials overlapped"
    assert all(t.user_attrs.get("info", {}).get("node") for t in done)
    # Each trial held one core (threads: 1), and two trials that held theirs at the same time
    # (by the node's clock, from taking them to giving them back) held different ones.
    held = {t.number: t.user_attrs["info"]["cores"] for t in done}
    assert all(len(h["held"]) == 1 for h in held.values()), held
    at_once = [
        (a, b)
        for a in held
        for b in held
        if a < b and held[a]["from"] < held[b]["until"] and held[b]["from"] < held[a]["until"]
    ]
    assert at_once, f"no two trials held cores at the same time: {held}"
    for a, b in at_once:
        assert not set(held[a]["held"]) & set(held[b]["held"]), (a, b, held)


def test_a_killed_ray_worker_fails_its_trial_and_the_rest_complete(in_tmp: Path, monkeypatch) -> None:
    pidfile = in_tmp / "pids"
    monkeypatch.setenv("AUTOTUNE_TEST_PIDFILE", str(pidfile))
    spec = write_spec(
        in_tmp,
        model={"factory": "models_for_tests:misbehaving"},
        inputs=[{"name": "x", "shape": ["batch", 16]}],
        sampler={"type": "grid"},
        space={"backend": ["torch-eager"], "batch_size": [1, 7, 8], "threads": [1]},
        objectives=[{"metric": "latency_p50_ms", "direction": "minimize"}],
        measurement={**FAST_MEASUREMENT, "trial_timeout_s": 60},
    )
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not pidfile.exists():
            time.sleep(0.2)
        time.sleep(0.5)
        worker, parent = (int(x) for x in pidfile.read_text().split())
        # A warm worker's parent is the Ray worker's zygote; the Ray worker is the zygote's parent.
        ray_worker = parent_of(parent) if b"autotuner.execution.zygote" in _cmdline(parent) else parent
        for pid in (ray_worker, worker):  # the Ray worker first: that is the drill
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    run(spec, executor="ray", progress=QUIET)
    t.join(timeout=5)
    study = _study()
    by_bs = {tr.user_attrs["config"]["batch_size"]: tr for tr in study.trials}
    assert killed, "the drill did not find the trial to kill"
    assert by_bs[7].state == TrialState.FAIL and by_bs[7].user_attrs["failure_class"] == "crash"
    assert "Ray worker died" in by_bs[7].user_attrs["failure_message"]
    assert by_bs[1].state == TrialState.COMPLETE and by_bs[8].state == TrialState.COMPLETE


def test_a_ray_task_past_its_deadline_is_cancelled_and_its_trial_is_a_timeout(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's deadline on a Ray task (trial_timeout_s + GRACE_S) is brought down to 15 s,
    below the worker's own 60 s timeout, so the task outlives it as a stuck Ray task would: it is
    cancelled by force, the trial is a timeout, and the worker it ran (which sleeps for an hour)
    is gone."""
    from autotuner.execution import ray_executor

    monkeypatch.setattr(ray_executor, "GRACE_S", -45.0)
    pidfile = in_tmp / "pids"
    monkeypatch.setenv("AUTOTUNE_TEST_PIDFILE", str(pidfile))
    spec = write_spec(
        in_tmp,
        model={"factory": "models_for_tests:misbehaving"},
        inputs=[{"name": "x", "shape": ["batch", 16]}],
        sampler={"type": "grid"},
        space={"backend": ["torch-eager"], "batch_size": [7], "threads": [1]},
        objectives=[{"metric": "latency_p50_ms", "direction": "minimize"}],
        constraints=[],
        measurement={**FAST_MEASUREMENT, "trial_timeout_s": 60},
    )
    run(spec, executor="ray", progress=QUIET)
    (trial,) = _study().trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["failure_class"] == "timeout"
    assert trial.user_attrs["failure_message"] == "the Ray task passed 15 s and was cancelled"
    assert pidfile.exists(), "the worker started: the task was running when it was cancelled"
    worker = int(pidfile.read_text().split()[0])
    deadline = time.monotonic() + 30  # a bound on a failure: the worker is gone long before
    while time.monotonic() < deadline and _running(worker):
        time.sleep(0.2)
    assert not _running(worker)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("workers", ["warm", "fresh"])
def test_blocks_on_ray_fork_from_one_zygote_per_ray_worker(in_tmp: Path, workers: str) -> None:
    """measurement.workers reaches Ray: with warm (the default) every block is forked from a
    zygote that its Ray worker process keeps between tasks (one zygote per Ray worker, serving
    several blocks); with fresh each block is a new interpreter."""
    measurement = {**FAST_MEASUREMENT, "workers": workers}
    spec = write_spec(in_tmp, budget={"trials": 6}, measurement=measurement, pick={"rounds": 0})
    run(spec, executor="ray", progress=QUIET)
    done = [t for t in _study().trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 5, [t.user_attrs.get("failure_message") for t in _study().trials]
    infos = [t.user_attrs["info"] for t in done]
    assert {i["worker"] for i in infos} == {workers}
    if workers == "fresh":
        assert not any("zygote" in i for i in infos)
        return
    zygotes: dict[int, set[int]] = {}
    for i in infos:
        zygotes.setdefault(i["ray_worker_pid"], set()).add(i["zygote"])
    assert all(len(z) == 1 for z in zygotes.values()), zygotes  # one per Ray worker, kept
    served = [sum(i["zygote"] == z for i in infos) for (z,) in zygotes.values()]
    assert max(served) >= 2, zygotes  # a zygote served more than one block


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_two_node_cluster_runs_trials_on_both_nodes(in_tmp: Path) -> None:
    """The spec's folder travels: the model factory lives only beside the spec, and the worker
    processes run in Ray's copy of that folder, not in the test's."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        spec = write_spec(
            in_tmp,
            budget={"trials": 4},
            model={"factory": "models_for_tests:mlp"},
            inputs=[{"name": "x", "shape": ["batch", 16]}],
            measurement=fixed_time(1.0),
        )
        run(spec, executor="ray", address=cluster.address, progress=QUIET)
        done = [t for t in _study().trials if t.state == TrialState.COMPLETE]
        assert len(done) >= 3, [t.user_attrs.get("failure_message") for t in _study().trials]
        nodes = {t.user_attrs.get("info", {}).get("node") for t in done}
        assert len(nodes) == 2, nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_first_looks_are_short_on_ray_and_the_leaders_are_promoted(in_tmp: Path) -> None:
    """measurement.first_look_s reaches the Ray worker: each new config's first block is a short
    look (timed for about first_look_s, accuracy still checked), and a config promoted after its
    look gets a full-length block, on a real local Ray cluster."""
    from autotuner.study import records as rec

    measurement = {**FAST_MEASUREMENT, "min_time_s": 0.3, "max_time_s": 0.6, "first_look_s": 0.05}
    spec = write_spec(in_tmp, budget={"trials": 3}, measurement=measurement, pick={"rounds": 0})
    run(spec, executor="ray", progress=QUIET)
    trials = _study().trials
    assert len(looked_then_promoted(trials, 0.3)) == 3  # three configs looked at: the budget
    assert any(rec.is_promotion(t) for t in trials)  # the leader of the moment at least
