"""The command line contract: run, bench, export, studies, show; one-line errors, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import dump, write_spec


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotuner.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def done_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    d = tmp_path_factory.mktemp("cli")
    shutil.copy(Path(__file__).parents[1] / "models_for_tests.py", d)
    write_spec(d, budget={"trials": 3})
    out = cli("run", "spec.yaml", cwd=d)
    assert out.returncode == 0, out.stderr
    assert "[3/3]" in out.stdout and "best config: reports/t.best.yaml" in out.stdout
    assert "study: studies/t.db" in out.stdout
    return d


def test_studies_and_show(done_study: Path) -> None:
    import optuna

    n = len(optuna.load_study(study_name="t", storage=f"sqlite:///{done_study / 'studies' / 't.db'}").trials)
    out = cli("studies", cwd=done_study)
    assert out.returncode == 0 and "t " in out.stdout and f" {n} " in out.stdout
    out = cli("show", "t", cwd=done_study)
    assert out.returncode == 0
    assert "trials: complete" in out.stdout and "chosen: trial #" in out.stdout
    assert "top configs by pooled throughput_items_s" in out.stdout


def test_export_by_another_rule_measures_nothing(done_study: Path) -> None:
    """Export reads the study only: every row of every table is the same after it (no trial, no
    race block, and the run's own choice stays the one `show` and the report name)."""
    url = f"sqlite:///{done_study / 'studies' / 't.db'}"
    before = dump(url)
    assert "trials (0 rows)" not in before and '"rule": "max:throughput_items_s"' in before
    out = cli("export", "t", "--pick", "min:latency_p95_ms", "-o", "lat.yaml", cwd=done_study)
    assert out.returncode == 0, out.stderr
    best = yaml.safe_load((done_study / "lat.yaml").read_text())
    assert best["choice"]["rule"] == "min:latency_p95_ms"
    lat = [c["before_race"] for c in best["choice"]["candidates"] if not c.get("baseline")]
    assert lat == sorted(lat)
    assert dump(url) == before


def test_bench_measures_one_config(done_study: Path) -> None:
    out = cli(
        "bench",
        "spec.yaml",
        "--set",
        "backend=onnxruntime-cpu",
        "--set",
        "batch_size=2",
        "--json",
        cwd=done_study,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["ok"] and res["params"]["backend"] == "onnxruntime-cpu" and res["params"]["batch_size"] == 2
    assert res["metrics"]["latency_p50_ms"] > 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "nope"], "no study database at studies/nope.db"),
        (["show", "nope", "--storage", "sqlite:///studies/t.db"], "no study named 'nope'"),
        (["bench", "spec.yaml", "--set", "bogus=1"], "--set bogus: not a parameter"),
        (["bench", "spec.yaml", "--set", "novalue"], "expected KEY=VALUE"),
        (["bench", "spec.yaml", "--set", "batch_size=big"], "batch_size is an int parameter"),
        (["export", "t", "--pick", "fastest"], "--pick: rule 'fastest' must look like"),
        (["run", "spec.yaml", "--executor", "k8s"], "--executor 'k8s' is not available"),
        (["run", "spec.yaml", "--trials", "0"], "--trials must be at least 1"),
        (["run", "spec.yaml", "--trials", "abc"], "run: argument --trials: invalid int value: 'abc'"),
        (["bogus"], "argument command: invalid choice: 'bogus'"),
        (["run"], "run: the following arguments are required: spec"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(done_study: Path, args: list[str], needle: str) -> None:
    out = cli(*args, cwd=done_study)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autotune: error: ") and needle in lines[0], lines


def test_a_password_never_appears(done_study: Path) -> None:
    out = cli(
        "run", "spec.yaml", "--storage", "postgresql+psycopg://bob:s3cret-pw@127.0.0.1:1/db", cwd=done_study
    )
    assert out.returncode == 2
    assert "s3cret-pw" not in out.stderr + out.stdout and "***" in out.stderr


def test_outputs_are_as_readable_as_the_study_database(done_study: Path) -> None:
    """Reports, the best-config YAML and tables get the user's umask (0644 under 022), not
    mkstemp's 0600, so that a team can serve them from a shared folder."""
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    assert cli("report", "t", "--format", "csv", cwd=done_study).returncode == 0
    expected = 0o666 & ~mask
    for rel in ("reports/t.html", "reports/t.best.yaml", "reports/t.csv"):
        mode = stat.S_IMODE((done_study / rel).stat().st_mode)
        assert mode == expected, f"{rel}: {oct(mode)}, want {oct(expected)}"


def test_objectives_are_named_for_the_dashboard(done_study: Path) -> None:
    import optuna

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{done_study / 'studies' / 't.db'}")
    assert study.metric_names == ["throughput_items_s", "latency_p95_ms"]
