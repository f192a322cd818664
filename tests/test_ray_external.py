"""`autotune run --executor ray --address` against a cluster started apart from it, as a user
starts one (`ray start --head` in its own process), with Ray 2.60+ token authentication on.

The head's processes are found and ended by pid (tests/ray_nodes.py); nothing else of the
machine's Ray is touched. Slow on a small machine: two trials, no race.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from helpers import FAST_MEASUREMENT, write_spec
from optuna.trial import TrialState
from ray_nodes import MARK_VAR, RayNode, marked, ray_cli

pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
pytestmark = pytest.mark.skipif(ray_cli() is None, reason="no `ray` command on PATH")

TOKEN = secrets.token_hex(32)


@pytest.fixture(scope="module")
def head() -> Iterator[RayNode]:
    node = RayNode(head=True, num_cpus=2, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN})
    try:
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
    out = _driver(head, in_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
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
