"""Metrics a spec declares (`metrics:`): an external program's own figure as objective, constraint
and pick rule, through a real command-runner study, and the one-line errors of a bad declaration."""

from __future__ import annotations

import copy
import csv
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from helpers import NO_LOAD_CHECK
from optuna.trial import TrialState

from autotuner.api import export, load_spec, report, run
from autotuner.errors import SpecError
from autotuner.metrics import METRICS, RESERVED_NAMES
from autotuner.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
FILE = "spec.yaml"
ALLOWED = ", ".join(METRICS)

# A benchmark that reports an energy figure no built-in metric names: tokens per joule grows with
# the number of sequences served at once, the latency too.
ENERGY_SCRIPT = """\
import argparse, json
p = argparse.ArgumentParser()
p.add_argument("--seqs", type=int, required=True)
a = p.parse_args()
print("warming up")
print(json.dumps({"energy": {"tokens_per_joule": 0.5 * a.seqs}, "latency": {"p50": 2.0 * a.seqs}}))
"""

TPJ = {
    "unit": "tokens/J",
    "direction": "maximize",
    "description": "output tokens per joule of GPU energy",
}

BASE: dict[str, Any] = {
    "name": "energy",
    "model": {"external": "toy-engine"},
    "space": {"backend": "command", "seqs": [2, 8, 4]},
    "metrics": {"tokens_per_joule": TPJ},
    "objectives": [{"metric": "tokens_per_joule"}],  # the direction comes from the declaration
    "constraints": ["latency_p50_ms <= 100", "tokens_per_joule >= 0.1"],
    "budget": {"trials": 3},
    "sampler": {"type": "grid"},
    "pick": {"rounds": 0, "tie_break": ["max:tokens_per_joule"]},
    "measurement": {"max_foreign_load": NO_LOAD_CHECK},
    "command": {
        "argv": [sys.executable, "energy.py", "--seqs", "{seqs}"],
        "metrics": {"tokens_per_joule": "energy.tokens_per_joule", "latency_p50_ms": "latency.p50"},
    },
}


def _write(folder: Path, data: dict[str, Any]) -> Path:
    (folder / "energy.py").write_text(ENERGY_SCRIPT, encoding="utf-8")
    path = folder / FILE
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_a_declared_figure_is_the_objective_end_to_end(in_tmp: Path) -> None:
    out = io.StringIO()
    outcome = run(_write(in_tmp, BASE), progress=Progress(out=out))

    study = optuna.load_study(study_name="energy", storage="sqlite:///studies/energy.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE"]
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert t.user_attrs["tokens_per_joule"] == 0.5 * t.user_attrs["config"]["seqs"]
        assert t.values == [t.user_attrs["tokens_per_joule"]]

    assert outcome.pick is not None and outcome.pick.config["seqs"] == 8
    assert outcome.best_config_path is not None
    best = yaml.safe_load(outcome.best_config_path.read_text(encoding="utf-8"))
    assert best["params"]["seqs"] == 8
    assert best["choice"]["rule"] == "max:tokens_per_joule"
    assert best["metrics"]["tokens_per_joule"] == {
        "mean": 4.0,
        "blocks": 1,
        "unit": "tokens/J",
        "description": "output tokens per joule of GPU energy",
    }
    assert "unit" not in best["metrics"]["latency_p50_ms"]  # a built-in name says its unit
    assert [c["constraint"] for c in best["constraints"]] == [
        "latency_p50_ms <= 100",
        "tokens_per_joule >= 0.1",
    ]

    # The console summary and the HTML report show the unit; the report defines the metric.
    assert "tokens_per_joule (tokens/J)" in out.getvalue()
    page = (in_tmp / "reports" / "energy.html").read_text(encoding="utf-8")
    assert "tokens_per_joule (tokens/J)" in page
    assert "output tokens per joule of GPU energy; unit: tokens/J; better: higher" in page
    table = report(["energy"], output=in_tmp / "energy.csv", fmt="csv")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["tokens_per_joule"]) for r in rows) == [1.0, 2.0, 4.0]

    # A pick rule on the declared metric from the command line reads the stored study.
    again = export(
        "energy", rule="min:tokens_per_joule", output=in_tmp / "low.yaml", progress=Progress(quiet=True)
    )
    low = yaml.safe_load(Path(again).read_text(encoding="utf-8"))
    assert low["params"]["seqs"] == 2 and low["choice"]["rule"] == "min:tokens_per_joule"


def test_an_objective_states_its_own_direction_over_the_hint(tmp_path: Path) -> None:
    d = copy.deepcopy(BASE)
    d["objectives"] = [
        {"metric": "tokens_per_joule", "direction": "minimize"},
        {"metric": "latency_p50_ms", "direction": "minimize"},
    ]
    spec = load_spec(_write(tmp_path, d))
    assert [o.direction for o in spec.objectives] == ["minimize", "minimize"]
    assert spec.declared_metrics == {"tokens_per_joule": TPJ}


def test_a_bare_declaration_names_the_metric_only(tmp_path: Path) -> None:
    d = copy.deepcopy(BASE)
    d["metrics"] = {"tokens_per_joule": None}
    d["objectives"] = [{"metric": "tokens_per_joule", "direction": "maximize"}]
    spec = load_spec(_write(tmp_path, d))
    assert spec.declared_metrics == {"tokens_per_joule": {}}


def test_reserved_names_cover_every_attribute_the_study_keeps_apart() -> None:
    from autotuner.study import records

    assert records._NOT_METRICS <= RESERVED_NAMES


def _with(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = d
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return d


def _undeclared(name: str) -> str:
    return f"unknown metric {name!r}; allowed: {ALLOWED}, tokens_per_joule"


CASES = [
    pytest.param(
        _with(objectives=[{"metric": "mfu", "direction": "maximize"}]),
        "objectives[0].metric",
        _undeclared("mfu"),
        id="objective-undeclared",
    ),
    pytest.param(
        _with(metrics={}, objectives=[{"metric": "tokens_per_joule", "direction": "maximize"}]),
        "objectives[0].metric",
        f"unknown metric 'tokens_per_joule'; allowed: {ALLOWED}",
        id="objective-nothing-declared",
    ),
    pytest.param(
        _with(metrics={"tokens_per_joule": TPJ, "latency_p50_ms": {"unit": "ms"}}),
        "metrics.latency_p50_ms",
        "is a built-in metric; a declared metric needs a name of its own",
        id="shadows-a-builtin",
    ),
    pytest.param(
        _with(metrics={"tokens_per_joule": {**TPJ, "direction": "higher"}}),
        "metrics.tokens_per_joule.direction",
        "Input should be 'minimize' or 'maximize'",
        id="bad-direction",
    ),
    pytest.param(
        _with(metrics={"tokens_per_joule": {**TPJ, "units": "J"}}),
        "metrics.tokens_per_joule.units",
        "unknown field; allowed: unit, direction, description",
        id="unknown-declaration-field",
    ),
    pytest.param(
        _with(metrics={"tokens_per_joule": TPJ, "tokens/J": {}}),
        "metrics.tokens/J",
        "is not a usable metric name; start with a letter or '_', then letters, digits, '_' (up to 64)",
        id="name-not-an-identifier",
    ),
    pytest.param(
        _with(metrics={"tokens_per_joule": TPJ, "config": {}}),
        "metrics.config",
        "is a name autotune stores apart from the metrics; choose another",
        id="reserved-name",
    ),
    pytest.param(
        _with(objectives=[{"metric": ["tokens_per_joule"]}]),
        "objectives[0].metric",
        "Input should be a valid string",
        id="objective-metric-not-a-string",
    ),
    pytest.param(
        _with(metrics=["tokens_per_joule"]),
        "metrics",
        "must be a mapping, got a list",
        id="declarations-not-a-mapping",
    ),
    pytest.param(
        _with(metrics={"tokens_per_joule": {"unit": "tokens/J"}}),
        "objectives[0].direction",
        "required field is missing",
        id="no-direction-anywhere",
    ),
    pytest.param(
        _with(constraints=["mfu >= 0.4"]),
        "constraints[0]",
        _undeclared("mfu"),
        id="constraint-undeclared",
    ),
    pytest.param(
        _with(constraints=[{"metric": "mfu", "op": ">=", "bound": 0.4}]),
        "constraints[0].metric",
        _undeclared("mfu"),
        id="constraint-mapping-undeclared",
    ),
    pytest.param(
        _with(pick__tie_break=["max:tokens_per_joule", "max:mfu"]),
        "pick.tie_break[1]",
        _undeclared("mfu"),
        id="tie-break-undeclared",
    ),
    pytest.param(
        _with(pick__tie_break="max:mfu"),
        "pick.tie_break",
        _undeclared("mfu"),
        id="tie-break-string-undeclared",
    ),
    pytest.param(
        _with(command__metrics={"tokens_per_joule": "energy.tokens_per_joule", "mfu": "mfu"}),
        "command.metrics.mfu",
        _undeclared("mfu"),
        id="command-reads-undeclared",
    ),
    pytest.param(
        _with(command__metrics={"latency_p50_ms": "latency.p50"}),
        "metrics.tokens_per_joule",
        "declared, but command.metrics does not read it; give its JSON path there",
        id="declared-but-not-read",
    ),
]


@pytest.mark.parametrize(("content", "path", "problem"), CASES)
def test_bad_declarations(tmp_path: Path, content: dict[str, Any], path: str, problem: str) -> None:
    spec = _write(tmp_path, content)
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert str(info.value) == f"{spec}: {path}: {problem}"
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (_with(objectives=[{"metric": "mfu", "direction": "maximize"}]), "spec.yaml: objectives[0].metric: "),
        (_with(metrics={"latency_p50_ms": {}}), "spec.yaml: metrics.latency_p50_ms: is a built-in metric"),
        (
            _with(metrics={"tokens_per_joule": {"direction": "up"}}),
            "spec.yaml: metrics.tokens_per_joule.direction",
        ),
    ],
    ids=["undeclared", "shadows", "bad-direction"],
)
def test_the_cli_exits_2_with_one_line(tmp_path: Path, content: dict[str, Any], needle: str) -> None:
    _write(tmp_path, content)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "run", FILE],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"autotune: error: {needle}"), proc.stderr
    assert not (tmp_path / "studies").exists()
