"""`autotune verify`: the A/B check before rollout, on a real model through the real CLI; the
verdict rules on given rounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import dump, make_spec_dict, write_spec

from autotuner.api import spec_from_dict
from autotuner.report.verify import Arm, judge
from autotuner.spec.schema import Spec

# One config (torch eager, batch 32, one thread), one objective: the run is one trial, no race.
# Batch 1 is the deliberately worse config: a few times lower throughput, on one thread, so it
# stays worse when other processes load one of this machine's cores (two threads do not: one
# loaded core stalls both, and 2 threads measured slower than 1 under the suite's own load).
SPACE = {"backend": ["torch-eager"], "precision": ["fp32"], "batch_size": [32], "threads": [1]}
OBJECTIVES = [{"metric": "throughput_items_s", "direction": "maximize"}]
# 99%: two identical configs are called different in about 1 run in 200.
PICK = {"rounds": 3, "round_time_s": 0.5, "confidence": 0.99}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotuner.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def best(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a real study, its best-config YAML and a worse one (batch 1)."""
    import os

    from autotuner.api import run
    from autotuner.progress import Progress

    d = tmp_path_factory.mktemp("verify")
    write_spec(d, space=SPACE, objectives=OBJECTIVES, budget={"trials": 1}, pick=PICK)
    here = Path.cwd()
    os.chdir(d)
    try:
        out = run("spec.yaml", progress=Progress(quiet=True))
    finally:
        os.chdir(here)
    assert out.best_config_path is not None
    data = yaml.safe_load((d / out.best_config_path).read_text())
    data["params"]["batch_size"] = 1
    (d / "worse.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return d


def test_identical_configs_show_no_difference(best: Path) -> None:
    url = f"sqlite:///{best / 'studies' / 't.db'}"
    stored = dump(url)
    out = cli("verify", "reports/t.best.yaml", "--against", "reports/t.best.yaml", cwd=best)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trials (0 rows)" not in stored and dump(url) == stored, "verify writes nothing to a study"
    lines = out.stdout.splitlines()
    assert lines[-1] == "no significant difference (exit 0)"
    assert any(line.startswith("throughput_items_s ") for line in lines)
    assert "constraint accuracy_cosine >= 0.99: holds" in out.stdout
    assert "spec: study t in sqlite:///studies/t.db" in out.stdout


def test_worse_config_is_a_regression_naming_the_metric(best: Path) -> None:
    out = cli("verify", "worse.yaml", "--against", "reports/t.best.yaml", "--rounds", "5", "--json", cwd=best)
    assert out.returncode == 1, out.stdout + out.stderr
    res = json.loads(out.stdout)  # progress went to stderr: stdout is the one object
    assert res["exit_code"] == 1 and res["rounds"] == 5 and res["confidence"] == 0.99
    assert res["verdict"].startswith("regression: throughput_items_s -") and res["verdict"].endswith(
        "(exit 1)"
    )
    tp = next(m for m in res["metrics"] if m["metric"] == "throughput_items_s")
    assert tp["verdict"] == "worse" and tp["pairs"] == 5
    # The verdict reads the relative interval (per-round log ratios); the absolute difference's
    # interval is wider when the machine's speed changes between rounds, so it is not asserted.
    assert tp["relative_pct"]["ci_high"] < 0 and tp["difference"]["mean"] < 0
    assert res["candidate"]["config"]["batch_size"] == 1 and res["other"]["config"]["batch_size"] == 32
    assert res["candidate"]["means"]["throughput_items_s"] < res["other"]["means"]["throughput_items_s"]
    [c] = res["constraints"]
    assert c["constraint"] == "accuracy_cosine >= 0.99" and c["satisfied"] and c["value"] >= 0.99


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nope.yaml", "--baseline"], "nope.yaml: no such file"),
        (["spec.yaml", "--baseline"], "spec.yaml: not a best-config YAML"),
        (["reports/t.best.yaml"], "give one of --against OTHER.yaml or --baseline"),
        (["reports/t.best.yaml", "--baseline", "--against", "worse.yaml"], "give one of --against"),
        (
            ["reports/t.best.yaml", "--baseline"],
            "--baseline: the spec (study t in sqlite:///studies/t.db) has",
        ),
        (["reports/t.best.yaml", "--baseline", "--require-gain", "lots"], "invalid float value: 'lots'"),
        (["reports/t.best.yaml", "--baseline", "--rounds", "2"], "--rounds must be at least 3"),
        (["reports/t.best.yaml", "--baseline", "--spec", "none.yaml"], "none.yaml"),
        (["reports/t.best.yaml", "--against", "odd.yaml"], "odd.yaml: params.bogus: not a parameter"),
        (["elsewhere/t.best.yaml", "--baseline", "--storage", "sqlite:///no.db"], "cannot read the spec"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(best: Path, args: list[str], needle: str) -> None:
    odd = yaml.safe_load((best / "worse.yaml").read_text())
    odd["params"]["bogus"] = 1
    (best / "odd.yaml").write_text(yaml.safe_dump(odd))
    (best / "elsewhere").mkdir(exist_ok=True)
    (best / "elsewhere" / "t.best.yaml").write_text((best / "reports" / "t.best.yaml").read_text())
    out = cli("verify", *args, cwd=best)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
    assert needle in out.stderr


# ---- the verdict on given rounds (no measuring) ----------------------------------------------------

CONFIG = {"backend": "torch-eager", "precision": "fp32", "batch_size": 8, "threads": 1}


def _spec() -> Spec:
    return spec_from_dict(
        make_spec_dict(
            constraints=["accuracy_cosine >= 0.99", "latency_p95_ms <= 50"], pick={"confidence": 0.95}
        )
    )


def _arms(cand: list[tuple[float, float]], other: list[tuple[float, float]]) -> tuple[Arm, Arm]:
    """Arms from (throughput, p95 latency) per round; accuracy measured once, equal."""

    def arm(role: str, rounds: list[tuple[float, float]]) -> Arm:
        blocks = [{"throughput_items_s": t, "latency_p95_ms": p} for t, p in rounds]
        return Arm(role, f"{role}.yaml", CONFIG, {"accuracy_cosine": 0.999}, blocks)

    return arm("candidate", cand), arm("other", other)


def test_judge_names_a_regression_and_reports_every_metric() -> None:
    a, b = _arms([(88, 10), (87, 10.2), (89, 9.9)], [(100, 10.1), (99, 10), (101, 10.1)])
    v = judge(_spec(), a, b, 3)
    assert v.exit_code == 1
    assert v.verdict.startswith("regression: throughput_items_s -12.0% [")
    assert v.verdict.endswith("(exit 1)")
    assert [m.metric for m in v.metrics] == ["throughput_items_s", "latency_p95_ms", "accuracy_cosine"]
    assert [m.verdict for m in v.metrics][2] == "no interval (measured once)"
    text = "\n".join(v.lines())
    assert "relative [95% CI]" in text and "constraint latency_p95_ms <= 50: holds" in text
    assert json.loads(json.dumps(v.to_dict()))["exit_code"] == 1


def test_judge_lower_latency_is_better_and_a_broken_constraint_fails() -> None:
    a, b = _arms([(100, 8), (99, 8.1), (101, 7.9)], [(100, 10), (100, 10.2), (100, 9.9)])
    v = judge(_spec(), a, b, 3)
    assert v.exit_code == 0 and v.verdict.startswith("better: latency_p95_ms -")
    a, b = _arms([(100, 60), (99, 61), (101, 59)], [(100, 60), (100, 61), (100, 59)])
    v = judge(_spec(), a, b, 3)
    assert v.exit_code == 1
    assert v.verdict == "constraint broken: latency_p95_ms <= 50 (candidate 60) (exit 1)"


def test_judge_require_gain_and_a_config_that_did_not_run() -> None:
    a, b = _arms([(110, 10), (111, 10), (109, 10)], [(100, 10), (100, 10), (100, 10)])
    assert judge(_spec(), a, b, 3, require_gain_pct=5).exit_code == 0
    v = judge(_spec(), a, b, 3, require_gain_pct=20)
    assert v.exit_code == 1 and v.verdict.startswith("gain not shown: throughput_items_s +10.0%")
    a.error = "in round 2: oom: out of memory"
    v = judge(_spec(), a, b, 3)
    assert v.exit_code == 1 and "the candidate (candidate.yaml) failed in round 2: oom" in v.verdict
