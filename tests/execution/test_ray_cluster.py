"""Joining a Ray cluster and sizing trials by what its nodes hold (issue 27), without a cluster:
the pure computations, and `run --address` at an address where nothing answers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_spec

from autotuner.errors import UsageError
from autotuner.execution.ray_cluster import host_port
from autotuner.execution.ray_executor import Node, refusal, slot_count, trial_options


def test_host_port_reads_the_forms_ray_takes() -> None:
    assert host_port("10.0.0.1:6380") == ("10.0.0.1", 6380)
    assert host_port("head") == ("head", 6379)
    assert host_port("ray://head:10001") == ("head", 10001)
    with pytest.raises(UsageError, match="expected HOST:PORT"):
        host_port("head:port")


def test_a_trial_no_node_holds_is_refused_with_what_the_nodes_hold() -> None:
    nodes = [Node("a" * 16, "10.0.0.1", 2, 0), Node("b" * 16, "10.0.0.2", 1, 0)]
    assert refusal(nodes, trial_options(2, 0, 1, 1)) is None
    why = refusal(nodes, trial_options(4, 0, 1, 1))
    assert why == (
        "the config needs 4 CPU(s) on one node (threads); no node of the Ray cluster holds that "
        "(10.0.0.1: 2 CPU(s), 0 GPU(s), 10.0.0.2: 1 CPU(s), 0 GPU(s))"
    )
    assert "holds 1 GPU(s); no node of the Ray cluster has more than 0" in str(
        refusal(nodes, trial_options(None, 1, 1, 1))
    )
    # CPUs and GPUs on the same node: 4 CPUs on one node, the GPU on another, holds neither
    split = [Node("c", "10.0.0.3", 4, 0), Node("g", "10.0.0.4", 1, 1)]
    assert "needs 4 CPU(s) and 1 GPU(s) on one node" in str(refusal(split, trial_options(4, 1, 1, 1)))


def test_slots_count_only_the_trials_a_node_holds() -> None:
    """Two 1-CPU nodes and a space of threads 1 and 2: the 2-thread trials are refused, so two
    1-thread trials run at once (counting the 2-thread ones gave 1 // 2 = 0 per node: one slot)."""
    nodes = [Node("a", "", 1, 0), Node("b", "", 1, 0)]
    shapes = [trial_options(t, 0, 2, 1) for t in (1, 2)]
    assert slot_count(nodes, shapes) == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_address_that_does_not_answer_is_one_line_and_exit_2_before_a_study(in_tmp: Path) -> None:
    pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
    spec = write_spec(in_tmp, budget={"trials": 1})
    port = _closed_port()
    out = subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "run", str(spec), "--executor", "ray", "--address",
         f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"autotune: error: the Ray cluster at 127.0.0.1:{port} does not answer")
    assert not (in_tmp / "studies" / "t.db").exists()
    assert "ray:" not in out.stdout  # no cluster of its own was started instead


def test_address_needs_the_ray_executor(in_tmp: Path) -> None:
    spec = write_spec(in_tmp, budget={"trials": 1})
    out = subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "run", str(spec), "--address", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "autotune: error: --address applies to --executor ray"


def test_the_node_a_node_died_error_names() -> None:
    from autotuner.execution.ray_executor import dead_node

    node = "f779989f2e56a1c49b4fc2bc2abdf1cbda2c68667dd1eeb5c2c8b8c5"
    msg = f"Task failed because the node it was running on is dead. Node IP: 10.0.0.2, node ID: {node}. This"
    assert dead_node(msg) == node
    assert dead_node("the node died") is None


def test_address_auto_reads_ray_address_and_says_when_nothing_answers(in_tmp: Path) -> None:
    pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
    import os

    spec = write_spec(in_tmp, budget={"trials": 1})
    port = _closed_port()
    out = subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "run", str(spec), "--executor", "ray", "--address", "auto"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f":{port} does not answer (Connection refused)" in lines[0], lines
    assert not (in_tmp / "studies" / "t.db").exists()
