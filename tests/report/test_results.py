"""The results frames on a real small study: they, `show`, the report tables and the best-config
YAML agree on the chosen config and its interval; infeasible configs are marked everywhere with
the constraint they break; the report writes the frames as CSV, JSON and parquet; the docs'
notebook example runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import write_spec

import autotuner
from autotuner.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
# fp32 on torch matches its own fp32 reference exactly (cosine 1); int8-dynamic cannot.
BOUND = "accuracy_cosine >= 0.999999"
QUIET = Progress(quiet=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as `autotune run` leaves it: studies/quickstart.db (two objectives, a constraint
    that int8-dynamic breaks, raced) and studies/other.db (one objective)."""
    from autotuner.api import export, run

    d = tmp_path_factory.mktemp("results")
    spec = write_spec(
        d,
        "quickstart.yaml",
        name="quickstart",
        space={
            "backend": ["torch-eager"],
            "precision": ["fp32", "int8-dynamic"],
            "batch_size": [1, 4],
            "threads": [1],
        },
        sampler={"type": "grid"},
        budget={"trials": 4},
        constraints=[BOUND],
    )
    other = write_spec(
        d,
        "other.yaml",
        name="other",
        space={"backend": ["torch-eager"], "batch_size": [1, 2], "threads": [1]},
        sampler={"type": "grid"},
        budget={"trials": 2},
        objectives=[{"metric": "latency_p50_ms", "direction": "minimize"}],
        constraints=[],
        pick={"rounds": 0},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        assert run(spec, progress=QUIET).pick is not None
        assert run(other, progress=QUIET).pick is not None
        export("quickstart", output="best.yaml", progress=QUIET)
    return d


@pytest.fixture
def here(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(folder)
    return folder


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotuner.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_frames_show_and_yaml_agree_on_the_choice_and_its_interval(here: Path) -> None:
    r = autotuner.results("quickstart")
    chosen = r.chosen()
    assert len(chosen) == 1
    row = chosen.iloc[0]
    best = yaml.safe_load((here / "best.yaml").read_text())
    # The same config ...
    assert json.loads(row["config_key"]) == {k: best["params"][k] for k in json.loads(row["config_key"])}
    assert row["feasible"] == "yes" and bool(row["on_front"])
    # ... the same pooled estimate and interval (the YAML rounds to 6 significant digits).
    for m in ("throughput_items_s", "latency_p95_ms"):
        entry = best["metrics"][m]
        assert row[f"{m}_blocks"] == entry["blocks"]
        assert row[m] == pytest.approx(entry["mean"], rel=1e-5)
        if "ci_low" in entry:
            assert (row[f"{m}_low"], row[f"{m}_high"]) == pytest.approx(
                (entry["ci_low"], entry["ci_high"]), rel=1e-5
            )
    # ... and `show` prints them on the chosen row of the front.
    out = cli("show", "quickstart", cwd=here)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("*#") and "[" in x and "chosen" in x)
    cells = re.findall(
        r"(-?[\d.]+(?:e[+-]?\d+)?) \[(-?[\d.]+(?:e[+-]?\d+)?), (-?[\d.]+(?:e[+-]?\d+)?)\]", line
    )
    assert len(cells) == 2, line
    for (mean, lo, hi), m in zip(cells, ("throughput_items_s", "latency_p95_ms"), strict=True):
        assert float(mean) == pytest.approx(row[m], rel=1e-3)
        assert float(lo) == pytest.approx(row[f"{m}_low"], rel=1e-3)
        assert float(hi) == pytest.approx(row[f"{m}_high"], rel=1e-3)
    assert f"#{int(row['first_trial'])}" in line


def test_infeasible_configs_are_marked_with_the_constraint_they_break(here: Path) -> None:
    r = autotuner.results("quickstart")
    c = r.configs
    int8 = c[c["param:precision"] == "int8-dynamic"]
    fp32 = c[c["param:precision"] == "fp32"]
    assert len(int8) == 2 and len(fp32) == 2
    assert set(int8["feasible"]) == {"no"} and set(fp32["feasible"]) == {"yes"}
    assert all(b.startswith(f"{BOUND} (accuracy_cosine=") for b in int8["broken"])
    assert fp32["broken"].isna().all()
    assert not int8["on_front"].any() and not int8["chosen"].any()
    assert set(r.pareto["config_key"]) <= set(fp32["config_key"])

    text = cli("show", "quickstart", cwd=here).stdout
    assert "objectives: maximize throughput_items_s, minimize latency_p95_ms;" in text
    lines = text.splitlines()
    top = next(i for i, x in enumerate(lines) if x.startswith("  top configs by pooled throughput_items_s"))
    apart = next(i for i, x in enumerate(lines) if x.startswith("  configs that break a constraint (2"))
    top_rows = [x for x in lines[top + 1 : apart] if x.startswith(("#", "*#"))]
    assert len(top_rows) == 2 and all("precision=fp32" in x for x in top_rows)
    bad_rows = [x for x in lines[apart + 1 :] if x.startswith("#")][:2]
    assert len(bad_rows) == 2
    assert all("precision=int8-dynamic" in x and BOUND in x for x in bad_rows)

    # The report's configs table: the same marks, greyed.
    html = (here / "reports" / "quickstart.html").read_text()
    assert html.count("<tr class='infeasible'>") == 2
    assert f"{escape(BOUND)} (accuracy_cosine=" in html


def test_trials_frame_holds_every_trial_with_its_block_kind(here: Path) -> None:
    import optuna

    r = autotuner.results("quickstart")
    study = optuna.load_study(study_name="quickstart", storage="sqlite:///studies/quickstart.db")
    t = r.trials
    assert list(t["trial"]) == [x.number for x in study.trials]
    assert set(t["block"]) <= {"search", "repeat", "retry", "load-retry", "under-load", "pooled", "refused"}
    assert (t["block"] == "search").sum() == 4
    assert {"param:precision", "throughput_items_s", "accuracy_cosine", "duration_s", "foreign_load"} <= set(
        t.columns
    )
    assert (t["study"] == "quickstart").all()
    # The race: its rounds in long form match the per-candidate count.
    if len(r.race):
        per = r.race_rounds.groupby("candidate").size()
        for _, c in r.race.iterrows():
            assert per.get(c["candidate"], 0) == c["rounds"]


def test_several_studies_side_by_side(here: Path) -> None:
    r = autotuner.results(["quickstart", "other"])
    assert set(r.trials["study"]) == {"quickstart", "other"}
    assert list(r.chosen()["study"]) == ["quickstart", "other"]
    assert r.configs[r.configs["study"] == "other"]["latency_p50_ms"].notna().all()


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_report_writes_the_frames(here: Path, fmt: str) -> None:
    out = cli("report", "quickstart", "other", "--format", fmt, cwd=here)
    assert out.returncode == 0, out.stderr
    main = here / "reports" / f"quickstart-vs-other.{fmt}"
    r = autotuner.results(["quickstart", "other"])
    if fmt == "json":
        data = json.loads(main.read_text())
        assert data["study"] == ["quickstart", "other"]
        assert len(data["trials"]) == len(r.trials) and len(data["configs"]) == len(r.configs)
        chosen = [c for c in data["configs"] if c["chosen"]]
        assert [c["config_key"] for c in chosen] == list(r.chosen()["config_key"])
        return
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    trials = read(main)
    configs = read(main.with_name(f"quickstart-vs-other.configs.{fmt}"))
    assert len(trials) == len(r.trials) and list(trials["trial"]) == list(r.trials["trial"])
    assert list(configs[configs["chosen"]]["config_key"]) == list(r.chosen()["config_key"])
    got = configs[configs["chosen"]]["throughput_items_s_low"].iloc[0]
    assert got == pytest.approx(r.chosen()["throughput_items_s_low"].iloc[0], rel=1e-9)
    for name in ("pareto", "race", "race_rounds"):
        assert main.with_name(f"quickstart-vs-other.{name}.{fmt}").is_file()


def test_the_docs_notebook_example_runs(here: Path) -> None:
    text = (ROOT / "docs" / "results.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)], cwd=here, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "int8-dynamic" in out.stdout and BOUND in out.stdout  # the broken configs and why
