"""Two hosts for real: network namespaces joined by veth, a Ray head on one and a worker node on
the other, each started with `ray start` as a user would (token authentication on), and the CLI
run from the head. Skipped with the reason where namespaces cannot be made (not root, a sandbox
that forbids them).

One CPU is declared per node, so two trials at once means one on each host.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from helpers import fixed_time, write_spec
from optuna.trial import TrialState
from ray_nodes import (
    MARK_VAR,
    Host,
    RayNode,
    kill_marked,
    marked,
    netns_left,
    netns_refusal,
    ray_cli,
    running_trials,
    two_hosts,
)

pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
pytestmark = pytest.mark.skipif(ray_cli() is None, reason="no `ray` command on PATH")

TOKEN = secrets.token_hex(32)
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


@pytest.fixture
def cluster() -> Iterator[tuple[Host, RayNode, Host, RayNode]]:
    why = netns_refusal()
    if why:
        pytest.skip(why)
    with two_hosts() as (a, b):
        head = RayNode(head=True, num_cpus=1, node_ip=a.ip, prefix=a.prefix, env=AUTH)
        worker = RayNode(head=False, num_cpus=1, node_ip=b.ip, prefix=b.prefix, env=AUTH)
        try:
            head.start()
            worker.address = f"{a.ip}:{head.port}"
            worker.start()
            yield a, head, b, worker
        finally:
            worker.stop()
            head.stop()
        assert head.left() == {} and worker.left() == {}
    assert not netns_left(a) and not netns_left(b)


def _spec(folder: Path, batches: list[int], seconds: float) -> Path:
    """The model factory lives beside the spec only: the worker host runs Ray's copy of it."""
    return write_spec(
        folder,
        budget={"trials": len(batches)},
        model={"factory": "models_for_tests:mlp"},
        inputs=[{"name": "x", "shape": ["batch", 16]}],
        space={"backend": ["torch-eager"], "batch_size": batches, "threads": [1]},
        sampler={"type": "grid"},
        constraints=[],
        measurement=fixed_time(seconds),
        pick={"rounds": 0},
    )


def _driver(a: Host, head: RayNode, folder: Path, log: Path) -> subprocess.Popen[bytes]:
    home = folder / "home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*a.prefix, sys.executable, "-m", "autotuner.cli", "run", "spec.yaml", "--executor", "ray",
             "--address", f"{a.ip}:{head.port}"],
            cwd=folder, env={**base, "HOME": str(home), MARK_VAR: head.mark, **AUTH},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=f"sqlite:///{folder / 'studies' / 't.db'}")


def test_trials_run_on_both_hosts_and_land_once_each(cluster, in_tmp: Path) -> None:  # noqa: ANN001
    a, head, b, worker = cluster
    _spec(in_tmp, [1, 2, 4, 8], 1.0)
    log = in_tmp / "driver.log"
    driver = _driver(a, head, in_tmp, log)
    code = driver.wait(timeout=600)
    said = log.read_text()
    print(said)
    assert code == 0, said
    assert said.splitlines()[0].endswith(": 2 node(s), 2 CPU(s), 0 GPU(s)"), said
    assert f"joined the cluster at {a.ip}:{head.port}" in said and "executor ray (2 at once)" in said
    trials = _study(in_tmp).trials
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs for t in trials]
    assert sorted(t.user_attrs["config"]["batch_size"] for t in trials) == [1, 2, 4, 8]
    hosts = {t.user_attrs["info"]["node_ip"] for t in trials}
    assert hosts == {a.ip, b.ip}, hosts
    assert {t.user_attrs["info"]["ray_session"] for t in trials} == {head.session()}
    assert not [c for m in (head.mark, worker.mark) for c in marked(m).values() if "autotuner" in c]


def test_a_worker_host_lost_mid_trial_is_a_crash_and_the_study_goes_on_on_the_head(
    cluster,  # noqa: ANN001
    in_tmp: Path,
) -> None:
    a, head, b, worker = cluster
    _spec(in_tmp, [1, 2, 4, 8], 3.0)
    log = in_tmp / "driver.log"
    driver = _driver(a, head, in_tmp, log)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if running_trials(worker.mark):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no trial started on the worker host:\n{log.read_text()}")
        time.sleep(1.0)  # into its measurement
        killed_at = datetime.now()  # naive local time, as Optuna records trials
        kill_marked(worker.mark, hard=True)  # the host is gone: raylet, Ray workers, the trial
        code = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    said = log.read_text()
    print(said)
    assert code == 0, said
    trials = _study(in_tmp).trials
    crashed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(crashed) == 1, [(t.state, t.user_attrs.get("failure_message")) for t in trials]
    assert crashed[0].user_attrs["failure_class"] == "crash", crashed[0].user_attrs
    reason = crashed[0].user_attrs["failure_message"]
    lag = (crashed[0].datetime_complete - killed_at).total_seconds()
    print(f"crash reason: {reason}\ncrash recorded {lag:.1f} s after the kill")
    assert reason.startswith("the Ray node died mid-trial: ") and b.ip in reason, reason
    assert reason.endswith("(the cluster now has 1 node(s), 1 CPU(s): 1 at once)"), reason
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 3
    after = [t for t in done if t.datetime_start > killed_at]
    assert after and {t.user_attrs["info"]["node_ip"] for t in after} == {a.ip}
