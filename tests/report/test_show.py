"""`autotune show` on real small studies: the top configs, the front of pooled estimates, the choice."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import optuna
import pytest
from helpers import study_of_refusals, write_spec
from optuna.trial import TrialState

from autotuner.api import run
from autotuner.progress import Progress
from autotuner.study import records as rec

QUIET = Progress(quiet=True)
OBJECTIVES = [("throughput_items_s", "maximize"), ("latency_p95_ms", "minimize")]
ACCURACY_BOUND = 0.99
# A front row: mark, trial, config, blocks, then mean [low, high] per objective, then the note.
NUM = r"(-?[\d.]+(?:e[+-]?\d+)?)"
CELL = rf"{NUM} \[{NUM}, {NUM}\]"
ROW = re.compile(rf"^(\*?)#(\d+)\s+(.+?)\s+(\d+)\s+{CELL}\s+{CELL}\s*(.*)$")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Real small runs: two objectives over four configs (raced, so some have several blocks),
    one objective, and one where every config is refused."""
    d = tmp_path_factory.mktemp("show")
    urls = {n: f"sqlite:///{d / n}.db" for n in ("two", "one", "none")}
    space = {"backend": ["torch-eager", "onnxruntime-cpu"], "batch_size": [1, 4], "threads": [1]}
    two = write_spec(
        d,
        "two.yaml",
        name="two",
        space=space,
        sampler={"type": "grid"},
        budget={"trials": 4},
        # The baseline runs in every race round, so the race runs and adds blocks to some configs.
        baseline={"backend": "torch-eager", "batch_size": 1},
        constraints=[f"accuracy_cosine >= {ACCURACY_BOUND}"],
    )
    run(two, storage=urls["two"], progress=QUIET, reports_dir=d / "reports")
    one = write_spec(
        d,
        "one.yaml",
        name="one",
        space={"backend": ["torch-eager"], "batch_size": [1, 2], "threads": [1]},
        sampler={"type": "grid"},
        budget={"trials": 2},
        objectives=[{"metric": "latency_p50_ms", "direction": "minimize"}],
        pick={"rounds": 0},
    )
    run(one, storage=urls["one"], progress=QUIET, reports_dir=d / "reports")
    none = write_spec(
        d,
        "none.yaml",
        name="none",
        space={"backend": ["torch-eager"], "batch_size": [1, 2], "threads": [999]},
        budget={"trials": 2},
    )
    study_of_refusals(none, urls["none"])
    return urls


def show(name: str, url: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "show", name, "--storage", url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _key(config: dict[str, Any]) -> str:
    return json.dumps(sorted((str(k), str(v)) for k, v in config.items()))


def _parse_config(text: str) -> dict[str, str]:
    return dict(tok.split("=", 1) for tok in text.split())


def pooled_means(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Each config's mean of every metric over every block that has it: its measuring trials
    (COMPLETE, not a repeat told the pooled value) and its race blocks. Computed here, apart from
    autotuner.search.estimates."""
    blocks: dict[str, list[dict[str, float]]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.COMPLETE or rec.pooled_from(t) is not None:
            continue
        assert not rec.under_load(t)  # the test specs switch the load check off
        cfg = rec.trial_config(t)
        configs.setdefault(_key(cfg), cfg)
        blocks.setdefault(_key(cfg), []).append(rec.metrics(t))
    for b in rec.race_blocks(study):
        assert not b.get("under_load")
        cfg = dict(b["config"])
        configs.setdefault(_key(cfg), cfg)
        metrics = {m: float(v) for m, v in b["metrics"].items() if isinstance(v, int | float)}
        blocks.setdefault(_key(cfg), []).append(metrics)
    out = {}
    for k, bs in blocks.items():
        means = {}
        for m in {m for b in bs for m in b}:
            vs = [b[m] for b in bs if m in b and b[m] == b[m]]
            if vs:
                means[m] = sum(vs) / len(vs)
        out[k] = {"config": configs[k], "n": len(bs), "means": means}
    return out


def non_dominated(rows: dict[str, dict[str, Any]]) -> set[str]:
    losses = {
        k: [(-r["means"][m] if d == "maximize" else r["means"][m]) for m, d in OBJECTIVES]
        for k, r in rows.items()
    }

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(
            x < y for x, y in zip(a, b, strict=True)
        )

    return {k for k, a in losses.items() if not any(dominates(b, a) for j, b in losses.items() if j != k)}


def front_rows(text: str) -> list[re.Match[str]]:
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("  Pareto front of the feasible configs")
    )
    assert lines[start + 1].split()[:3] == ["trial", "config", "blocks"]
    assert set(lines[start + 2].replace(" ", "")) == {"-"}
    rows = []
    for line in lines[start + 3 :]:
        if not line.startswith(("#", "*#")):
            break
        m = ROW.match(line)
        assert m, line
        rows.append(m)
    return rows


def test_front_lists_the_non_dominated_configs_and_marks_the_choice(studies: dict[str, str]) -> None:
    url = studies["two"]
    study = optuna.load_study(study_name="two", storage=url)
    text = show("two", url)
    assert "top configs by pooled throughput_items_s" in text
    pooled = pooled_means(study)
    assert len(pooled) == 4 and any(r["n"] > 1 for r in pooled.values())  # the race added blocks
    ok = {
        k: r
        for k, r in pooled.items()
        if r["means"].get("accuracy_cosine", 0.0) >= ACCURACY_BOUND
        and all(m in r["means"] for m, _ in OBJECTIVES)
    }
    expected = non_dominated(ok)
    assert expected

    rows = front_rows(text)
    pick = rec.stored_pick(study)
    assert pick is not None
    chosen = _key(pick.get("config") or rec.trial_config(study.trials[pick["winner"]]))
    listed = set()
    for m in rows:
        config = _parse_config(m[3])
        k = _key(config)
        assert k in pooled, m[0]
        r = pooled[k]
        assert int(m[2]) == min(
            t.number
            for t in study.trials
            if t.state == TrialState.COMPLETE
            and rec.pooled_from(t) is None
            and _key(rec.trial_config(t)) == k
        )
        assert int(m[4]) == r["n"], m[0]
        for i, (metric, _) in enumerate(OBJECTIVES):
            mean, lo, hi = (float(m[5 + 3 * i + j]) for j in range(3))
            assert mean == pytest.approx(r["means"][metric], rel=1e-3), (m[0], metric)
            assert lo < mean < hi, m[0]
        note = m[11]
        if k == chosen:
            assert m[1] == "*" and note.startswith("chosen"), m[0]
        else:
            assert m[1] == "" and note == "", m[0]
        if note != "chosen, off the front":
            listed.add(k)
            assert k in expected, f"{m[0]!r} is dominated among the pooled estimates"
    assert listed == expected
    assert chosen in {_key(_parse_config(m[3])) for m in rows}
    assert sum(1 for m in rows if m[1] == "*") == 1
    assert f"Pareto front of the feasible configs by pooled estimates ({len(expected)}): " in text
    assert f"chosen: trial #{pick['winner']}" in text


def test_one_objective_shows_the_top_configs_and_says_there_is_no_front(studies: dict[str, str]) -> None:
    text = show("one", studies["one"])
    assert "top configs by pooled latency_p50_ms" in text
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if "top configs by pooled latency_p50_ms" in line)
    assert lines[i + 1].split() == ["trial", "config", "blocks", "latency_p50_ms"]
    top = [line for line in lines[i + 3 :] if line.startswith(("#", "*#"))]
    assert len(top) == 2 and all("backend=torch-eager" in line for line in top)
    assert sum(1 for line in top if line.startswith("*#")) == 1  # the chosen one
    assert "one objective (minimize latency_p50_ms): no Pareto front to show" in text
    assert "Pareto front of" not in text


def test_a_study_without_a_completed_config_says_so(studies: dict[str, str]) -> None:
    text = show("none", studies["none"])
    assert "no completed config" in text
    assert "top configs" not in text and "Pareto front of" not in text
