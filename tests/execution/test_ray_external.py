"""`autotune run --executor ray --address` against a cluster started apart from it, as a user
starts one (`ray start --head` in its own process), with Ray 2.60+ token authentication on.

The head's processes are found and ended by pid (tests/ray_nodes.py); nothing else of the
machine's Ray is touched. Slow on a small machine: two trials, no race.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import FAST_MEASUREMENT, write_spec
from optuna.trial import TrialState
from ray_nodes import MARK_VAR, RayNode, marked, ray_cli

pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
pytestmark = pytest.mark.skipif(ray_cli() is None, reason="no `ray` command on PATH")


@pytest.fixture(scope="module")
def head() -> Iterator[RayNode]:
    """The README's steps: `ray get-auth-token --generate`, then `RAY_AUTH_MODE=token ray start
    --head`, the token read from ~/.ray/auth_token."""
    node = RayNode(head=True, num_cpus=2, env={"RAY_AUTH_MODE": "token"})
    try:
        node.generate_token()
        node.start()
        yield node
    finally:
        node.stop()
        assert node.left() == {}, node.left()
        assert not node.temp_dir.exists()


def _spec(folder: Path, trials: int) -> Path:
    return write_spec(
        folder,
        budget={"trials": trials},
        model={"factory": "models_for_tests:mlp"},
        inputs=[{"name": "x", "shape": ["batch", 16]}],
        space={"backend": ["torch-eager"], "batch_size": [1, 4], "threads": [1]},
        sampler={"type": "grid"},
        constraints=[],
        measurement=FAST_MEASUREMENT,
        pick={"rounds": 0},
    )


def _driver(head: RayNode, folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The command a user types, in its own process; the head's HOME is not its HOME."""
    home = folder / "home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "run", "spec.yaml", "--executor", "ray",
         "--address", f"127.0.0.1:{head.port}"],
        cwd=folder,
        env={**base, "HOME": str(home), MARK_VAR: head.mark, **env},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_driver_without_the_token_is_one_line_and_exit_2_before_a_study(
    head: RayNode, in_tmp: Path
) -> None:
    _spec(in_tmp, 1)
    out = _driver(head, in_tmp)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"autotune: error: the Ray cluster at 127.0.0.1:{head.port} refused this driver"
    )
    assert "RAY_AUTH_MODE=token" in lines[0]
    assert not (in_tmp / "studies" / "t.db").exists()


def test_trials_run_on_the_cluster_named_and_land_once_each(head: RayNode, in_tmp: Path) -> None:
    _spec(in_tmp, 2)
    # The token file copied to the driver's machine, as the README says.
    (in_tmp / "home" / ".ray").mkdir(parents=True)
    shutil.copy(head.home() / ".ray" / "auth_token", in_tmp / "home" / ".ray" / "auth_token")
    out = _driver(head, in_tmp, RAY_AUTH_MODE="token")
    assert out.returncode == 0, out.stdout + out.stderr
    first = out.stdout.splitlines()[0]
    session = head.session()
    assert first.startswith("ray: joined the cluster at ") and f":{head.port} ({session})" in first, first
    assert first.endswith(": 1 node(s), 2 CPU(s), 0 GPU(s)"), first
    assert "executor ray (2 at once)" in out.stdout

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{in_tmp / 'studies' / 't.db'}")
    assert len(study.trials) == 2
    assert all(t.state == TrialState.COMPLETE for t in study.trials), [t.user_attrs for t in study.trials]
    assert sorted(t.user_attrs["config"]["batch_size"] for t in study.trials) == [1, 4]  # once each
    infos = [t.user_attrs["info"] for t in study.trials]
    assert {i["ray_session"] for i in infos} == {session}, "trials ran on another cluster"
    # The driver is gone and so is every trial worker: only the head's own daemons are left.
    assert not [cmd for cmd in marked(head.mark).values() if "autotuner" in cmd]


# A driver of its own (Ray reads RAY_AUTH_MODE once per process): an executor on the cluster, one
# trial submitted, what came back printed as JSON.
SUBMIT = """
import json, sys
from autotuner.api import load_spec, probe
from autotuner.execution.base import TrialRequest
from autotuner.execution.ray_executor import RayExecutor
ex = RayExecutor(load_spec("spec.yaml"), probe(), address=sys.argv[1])
try:
    res = ex.submit(TrialRequest(0, json.loads(sys.argv[2]))).result(timeout=60)
    print(json.dumps({"slots": ex.slots, **res.to_dict()}))
finally:
    ex.close()
"""


def test_a_trial_no_node_holds_is_refused_at_once_and_sizes_no_slot(head: RayNode, in_tmp: Path) -> None:
    """4 threads on a cluster whose one node has 2 CPUs: unsupported with the reason, not a task
    queued in Ray until its deadline; and 2 at once (the 4-thread trials made it 2 // 4 = 1)."""
    spec = _spec(in_tmp, 1)
    data = yaml.safe_load(spec.read_text())
    data["space"]["threads"] = [1, 4]
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    config = {"backend": "torch-eager", "batch_size": 1, "threads": 4}
    token = (head.home() / ".ray" / "auth_token").read_text().strip()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # the token's other way in
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run(
        [sys.executable, "-c", SUBMIT, f"127.0.0.1:{head.port}", json.dumps(config)],
        cwd=in_tmp,
        env={**base, "HOME": str(in_tmp), MARK_VAR: head.mark, **auth},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["slots"] == 2
    assert res["failure_class"] == "unsupported", res
    assert res["failure_message"].startswith("the config needs 4 CPU(s) on one node (threads)")
    assert res["failure_message"].endswith(": 2 CPU(s), 0 GPU(s))")
