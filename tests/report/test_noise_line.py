"""The end-of-run summary says how much one config's blocks vary, and calls a noisy study out.

The real driver and race run against two recorded landscapes (the replay executor answers each
block with one of the config's recorded blocks, as benchmarks/search_quality.py does) into a study
in a real SQLite file: tiny5, recorded on a steady machine (blocks of a config within about 4%),
and sessions5, recorded on a 2-core VM whose blocks flip between fast and slow (about 12%). The
figure printed must be the spread of the blocks the study holds, read back from the file.
"""

from __future__ import annotations

import io
import math
import re
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _run(tmp_path: Path, name: str, spec_path: str) -> tuple[str, optuna.Study]:
    from search_quality import landscape_caps, split, strategy_spec

    from autotuner import api
    from autotuner.execution.replay import ReplayExecutor
    from autotuner.progress import Progress
    from autotuner.report.summary import summary

    land = str(ROOT / "benchmarks" / "landscapes" / f"{name}.jsonl")
    spec = strategy_spec(str(ROOT / spec_path), "default")
    caps = landscape_caps(land)
    replayed, _ = split(land, 0)
    ex = ReplayExecutor(spec, caps, replayed, seed=0)
    url = f"sqlite:///{tmp_path / name}.db"
    study = optuna.create_study(
        study_name=name, storage=url, directions=[o.direction for o in spec.objectives]
    )
    quiet = Progress(quiet=True)
    api.search(spec, study, ex, caps=caps, progress=quiet, storage=url)
    pick = api.choose(spec, study, None, ex, quiet)
    out = io.StringIO()
    summary(spec, optuna.load_study(study_name=name, storage=url), pick, Progress(out=out))
    return out.getvalue(), optuna.load_study(study_name=name, storage=url)


def _stored_spread(study: optuna.Study, metric: str) -> float:
    """The pooled sd of log block values per config, from what the study file holds."""
    from autotuner.search.estimates import pool
    from autotuner.study import records as rec

    ss, df = 0.0, 0
    for e in pool(study.get_trials(deepcopy=False), rec.race_blocks(study)).values():
        logs = [math.log(v) for v in e.values(metric) if v > 0]
        if len(logs) >= 2:
            mu = sum(logs) / len(logs)
            ss += sum((x - mu) ** 2 for x in logs)
            df += len(logs) - 1
    return math.sqrt(ss / df)


@pytest.mark.parametrize(
    ("name", "spec", "noisy"),
    [("tiny5", "search_spaces/tiny.yaml", False), ("sessions5", "benchmarks/landscapes/sessions.yaml", True)],
)
def test_the_summary_states_the_studys_noise(
    tmp_path: Path, monkeypatch, name: str, spec: str, noisy: bool
) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    text, study = _run(tmp_path, name, spec)
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("noise:"))
    m = re.search(r"vary by (\d+)% \(between-block spread over (\d+) configs", line)
    assert m, line
    want = _stored_spread(study, "throughput_items_s")
    assert int(m.group(1)) == round(100 * want), (line, want)
    assert int(m.group(2)) >= 2
    assert ("that is high" in line) is noisy, line
    if noisy:
        # How far apart two configs must be, from the same spread and the chosen one's blocks:
        # the 95% half-width of a difference of two means of n independent log values each.
        from scipy.stats import t

        m = re.search(r"with (\d+) blocks each, two configs must differ by about (\d+)%", line)
        assert m, line
        n = int(m.group(1))
        d = math.expm1(t.ppf(0.975, 2 * n - 2) * want * math.sqrt(2 / n))
        assert int(m.group(2)) == round(100 * d) and d > want, (line, d)
