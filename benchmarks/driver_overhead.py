"""The driver's own cost per trial, without running any model.

Runs the real search stage (`autotuner.api.search`: ask, suggest, precheck, record, best_line,
storage reads and writes) over the quickstart spec's space with its TPE sampler, through the
public API only, with an executor that answers at once with a made-up TrialResult: every metric
name of autotuner/metrics.py with plausible values for the config, and 200 latency samples, as a
real trial writes them. Time spent per trial is therefore all driver + Optuna + storage.

    python benchmarks/driver_overhead.py                 # SQLite, 1000 trials
    python benchmarks/driver_overhead.py --pg-trials 100 # and PostgreSQL, 100 trials

Trial i's wall time runs from the end of trial i-1 to the end of trial i (the Progress hook the
driver calls for every trial). Storage transactions are counted with SQLAlchemy's commit event.
Where the time goes is read from cProfile over a separate, shorter run (profiling slows it down,
so only its shares are quoted); nothing in autotune is patched.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import event
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_lines  # noqa: E402

from autotuner import api  # noqa: E402
from autotuner.api import load_spec, probe  # noqa: E402
from autotuner.execution import Executor, TrialRequest  # noqa: E402
from autotuner.measure.harness import keep, summarize  # noqa: E402
from autotuner.metrics import HARNESS_METRICS  # noqa: E402
from autotuner.progress import Progress  # noqa: E402
from autotuner.result import TrialResult  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "quickstart.yaml"
DOC = ROOT / "docs" / "benchmarks" / "driver_overhead.md"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"  # SQLAlchemy 2.1 picks psycopg 3
N_SAMPLES = 200

# Rough per-item cost (ms) and accuracy of each backend/precision, so that the fake results
# give the sampler a landscape with structure, as real ones do.
PER_ITEM_MS = {
    ("torch-eager", "fp32"): 1.6,
    ("torch-eager", "bf16"): 2.4,
    ("torch-eager", "int8-dynamic"): 1.0,
    ("onnxruntime-cpu", "fp32"): 1.2,
    ("onnxruntime-cpu", "int8-dynamic"): 0.7,
}
COSINE = {"fp32": 1.0, "bf16": 0.9995, "int8-dynamic": 0.993}


def fake_result(config: dict[str, Any], rng: np.random.Generator) -> TrialResult:
    bs = int(config.get("batch_size", 1))
    threads = int(config.get("threads") or 1)
    key = (config.get("backend"), config.get("precision", "fp32"))
    per_item = PER_ITEM_MS.get(key, 1.5) * (0.6 if threads == 2 else 1.0)
    p50 = 0.3 + bs * per_item * float(rng.lognormal(0.0, 0.05))
    ms = p50 * rng.lognormal(0.0, 0.04, size=N_SAMPLES)
    metrics = summarize(ms, bs, float(ms.sum()) / 1e3 + 0.01, stable=True)
    cos = COSINE[key[1]] - float(abs(rng.normal(0.0, 0.002 if key[1] == "int8-dynamic" else 1e-5)))
    metrics.update(
        setup_s=float(rng.uniform(0.3, 4.0)),
        host_rss_mb=float(rng.uniform(350.0, 600.0)),
        accuracy_cosine=cos,
        accuracy_max_abs_error=float(rng.uniform(0.0, 0.05 if key[1] != "fp32" else 1e-5)),
        accuracy_top1=1.0 if cos > 0.995 else 0.9375,
        foreign_load=0.0,
    )
    metrics["peak_memory_mb"] = metrics["host_rss_mb"]
    assert set(metrics) == set(HARNESS_METRICS), set(HARNESS_METRICS) ^ set(metrics)
    return TrialResult(ok=True, metrics=metrics, latency_samples_ms=keep(ms, N_SAMPLES))


class InstantExecutor(Executor):
    """Answers each trial at once with a fake result (no worker process, no model)."""

    slots = 1

    def __init__(self, spec, caps, seed: int = 0) -> None:  # noqa: ANN001
        super().__init__(spec, caps)
        self.rng = np.random.default_rng(seed)
        self.launched = 0

    def submit(self, request: TrialRequest) -> Future[TrialResult]:
        fut: Future[TrialResult] = Future()
        fut.set_result(fake_result(request.config, self.rng))
        self.launched += 1
        return fut


class Clock(Progress):
    """Quiet progress that notes when each trial ends (the driver calls it for every trial)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.ends: list[tuple[int, float, str | None]] = []

    def trial_finished(self, n, total, number, summary, seconds, failure, best) -> None:  # noqa: ANN001
        self.ends.append((number, time.perf_counter(), failure))
        super().trial_finished(n, total, number, summary, seconds, failure, best)


class Commits:
    """SQLAlchemy 'commit' events: one per storage transaction."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *_: Any) -> None:
        self.n += 1


class CountingClock(Clock):
    """Also notes the transactions committed up to each trial's end."""

    def __init__(self, commits: Commits) -> None:
        super().__init__()
        self.commits = commits
        self.commit_marks: list[int] = []

    def trial_finished(self, n, total, number, summary, seconds, failure, best) -> None:  # noqa: ANN001
        self.commit_marks.append(self.commits.n)
        super().trial_finished(n, total, number, summary, seconds, failure, best)


def bench_spec(spec_path: Path, trials: int, study_name: str) -> Any:
    base = load_spec(spec_path)
    # A batch range wide enough that the space outlasts the study: the driver ends a search once
    # every config is tried, and this benchmark is about the cost per trial at 1000 trials.
    space = {k: v.model_dump(exclude_none=True, exclude_defaults=True) for k, v in base.space.items()}
    space = {k: (v.get("choices") if set(v) == {"choices"} else v) for k, v in space.items()}
    space["batch_size"] = {"low": 1, "high": 512}
    return load_spec(spec_path, overrides={"study": study_name, "budget": {"trials": trials}, "space": space})


def run_study(
    spec_path: Path, url: str, trials: int, study_name: str, caps: dict[str, Any], profile: bool = False
) -> dict[str, Any]:
    spec = bench_spec(spec_path, trials, study_name)
    commits = Commits()
    progress = CountingClock(commits)
    t_open = time.perf_counter()
    study = api.open_study(spec, storage=url, caps=caps)
    open_s = time.perf_counter() - t_open
    executor = InstantExecutor(spec, caps, seed=spec.data_seed)
    event.listen(Engine, "commit", commits)
    prof = cProfile.Profile() if profile else None
    started = time.perf_counter()
    start_commits = commits.n
    try:
        if prof is not None:
            prof.enable()
        api.search(spec, study, executor, trials=trials, caps=caps, progress=progress, storage=url)
    finally:
        if prof is not None:
            prof.disable()
        event.remove(Engine, "commit", commits)
    total_s = time.perf_counter() - started
    rows = []
    prev, prev_commits = started, start_commits
    for (number, end, failure), mark in zip(progress.ends, progress.commit_marks, strict=True):
        rows.append(
            {"number": number, "wall": end - prev, "failure": failure, "commits": mark - prev_commits}
        )
        prev, prev_commits = end, mark
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "rows": rows,
        "total_s": total_s,
        "open_s": open_s,
        "states": states,
        "launched": executor.launched,
        "profile": prof,
        "study_name": study.study_name,
    }


# Where a trial's time goes: (label, function name, file fragment) read from the profile, as
# cumulative seconds (a part includes what it calls).
PROFILED = (
    ("ask (Optuna: the sampler's relative search space, trial creation)", "ask", "optuna/study/study.py"),
    ("suggest (Optuna: the sampler's draws)", "suggest", "autotuner/search/space.py"),
    ("precheck (runner checks, failed-before)", "precheck", "autotuner/search/precheck.py"),
    ("record (one transaction per trial)", "record", "autotuner/search/tell.py"),
    ("reading the study (get_trials)", "get_trials", "optuna/study/study.py"),
    ("best_line (the console's best so far)", "best_line", "autotuner/search/driver.py"),
    ("proposals (arms: update, propose, refinement)", "propose", "autotuner/search/proposals.py"),
    ("refinement picks (surrogate, neighbours)", "surrogate_pick", "autotuner/search/proposals.py"),
)


def profile_shares(prof: cProfile.Profile, trials: int) -> list[tuple[str, float]]:
    stats = pstats.Stats(prof)
    total = 0.0
    found: dict[str, float] = {}
    for (file, _, func), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if func == "search" and file.endswith("autotuner/api.py"):
            total = cum
        for label, name, frag in PROFILED:
            if func == name and file.endswith(frag):
                found[label] = found.get(label, 0.0) + cum
    out = [(label, found.get(label, 0.0) / trials * 1e3) for label, _, _ in PROFILED]
    return [("whole search (profiled)", total / trials * 1e3), *out]


def describe(spec_path: Path) -> str:
    """The space and sampler of a spec, in one line."""
    spec = load_spec(spec_path)
    parts = []
    for name, p in spec.space.items():
        if p.type == "categorical":
            parts.append(f"{name} {list(p.choices or [])}")
        elif p.type == "fixed":
            parts.append(f"{name} = {p.value!r}")
        else:
            parts.append(f"{name} {p.type} {p.low:g}..{p.high:g}{' log' if p.log else ''}")
    rel = spec_path.resolve()
    shown = rel.relative_to(ROOT) if rel.is_relative_to(ROOT) else rel
    return (
        f"`{shown}` space: {'; '.join(parts)}; sampler {spec.sampler.type} "
        f"(n_startup_trials {spec.sampler.n_startup_trials}), "
        f"{len(spec.objectives)} objectives, {len(spec.constraints)} constraint(s)"
    )


def window(rows: list[dict[str, Any]], first: int, last: int) -> list[dict[str, Any]]:
    """Trials first..last, counted from 1."""
    return rows[first - 1 : last]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if xs else math.nan


def summarize_window(rows: list[dict[str, Any]]) -> dict[str, float]:
    walls = [r["wall"] for r in rows]
    return {
        "wall_p50": pct(walls, 50),
        "wall_p95": pct(walls, 95),
        "commits": float(np.median([r["commits"] for r in rows])),
        "n": len(rows),
    }


def table(results: list[tuple[str, str, dict[str, float]]]) -> list[str]:
    lines = ["| storage | trials | per trial p50 (ms) | p95 (ms) | transactions per trial (median) |"]
    lines.append("|---|---|---|---|---|")
    for storage, label, s in results:
        lines.append(
            f"| {storage} | {label} | {s['wall_p50']:.1f} | {s['wall_p95']:.1f} | {s['commits']:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000, help="SQLite study size (default 1000)")
    ap.add_argument("--pg-trials", type=int, default=100, help="PostgreSQL study size; 0 skips it")
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--spec", type=Path, default=SPEC, help="spec whose space is searched")
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--profile-trials", type=int, default=300, help="size of the profiled run; 0 skips it")
    args = ap.parse_args(argv)
    load0 = load_average()

    # What precheck reads and the study records, probed in a child process as `autotune run` does.
    caps = probe()
    results: list[tuple[str, str, dict[str, float]]] = []
    runs: list[str] = []

    n = args.trials
    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        r = run_study(args.spec, url, n, "driver-overhead", caps)
        db_mb = Path(tmp, "bench.db").stat().st_size / 2**20
        shares: list[tuple[str, float]] = []
        if args.profile_trials > 0:
            purl = f"sqlite:///{tmp}/profiled.db"
            pr = run_study(
                args.spec, purl, args.profile_trials, "driver-overhead-profiled", caps, profile=True
            )
            shares = profile_shares(pr["profile"], len(pr["rows"]))
    rows = r["rows"]
    print(
        f"sqlite: {len(rows)} trials in {r['total_s']:.1f}s "
        f"(states {r['states']}, {r['launched']} sent to the executor), db {db_mb:.1f} MiB"
    )
    runs.append(
        f"- SQLite (fresh file in a temp dir): {len(rows)} trials in {r['total_s']:.1f} s, "
        f"trial states {r['states']}, {r['launched']} sent to the executor, "
        f"database {db_mb:.1f} MiB at the end; open_study {r['open_s'] * 1e3:.0f} ms"
    )
    # The budget counts measurements; repeats told their pooled value are free trials on top, so
    # the study holds more trials than the budget. Windows are over the study's trials: the
    # first 100, the 100 that bring it to `--trials`, and the last 100.
    total = len(rows)
    windows = [(1, min(100, total))]
    if total > n >= 200:
        windows.append((n - 99, n))
    if total > 100:
        windows.append((total - 99, total))
    for a, b in windows:
        s = summarize_window(window(rows, a, b))
        results.append(("SQLite", f"{a}-{b}", s))

    if args.pg_trials > 0:
        import optuna

        name = f"autotune-bench-{uuid.uuid4().hex[:12]}"
        try:
            r = run_study(args.spec, args.pg_url, args.pg_trials, name, caps)
        except Exception as e:  # noqa: BLE001 - report and go on without PostgreSQL
            print(f"postgresql: skipped ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            runs.append(f"- PostgreSQL: not measured ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        else:
            optuna.delete_study(study_name=name, storage=args.pg_url)
            rows = r["rows"]
            print(
                f"postgresql: {len(rows)} trials in {r['total_s']:.1f}s "
                f"(states {r['states']}); study {name} deleted"
            )
            runs.append(
                f"- PostgreSQL ({args.pg_url.split('@')[-1]}, local, psycopg 3): {len(rows)} trials in "
                f"{r['total_s']:.1f} s, trial states {r['states']}; study `{name}` deleted afterwards; "
                f"open_study {r['open_s'] * 1e3:.0f} ms"
            )
            results.append(("PostgreSQL", f"1-{len(rows)}", summarize_window(rows)))

    for line in table(results):
        print(line)
    prof_lines = [f"| {label} | {ms:.1f} |" for label, ms in shares]
    for line in prof_lines:
        print(line)

    doc = [
        "# Driver overhead per trial",
        "",
        "What the driver itself costs per trial, with no model run: the real search stage",
        "(`autotuner.api.search`, called as any user would) over a spec's space with its sampler",
        "(TPE: multivariate, group, constant liar). The",
        "executor answers at once with a fake `TrialResult(ok=True)` holding",
        f"every metric of `autotuner/metrics.py` and {N_SAMPLES} latency samples. Configs the runners",
        "refuse (bf16 on onnxruntime-cpu) are recorded as PRUNED by `precheck` without reaching",
        "the executor, as in a real run.",
        "",
        f"- {describe(args.spec)}; batch_size widened to the int range 1..512 so that the space "
        "outlasts the study",
        "",
        "Produced by `python benchmarks/driver_overhead.py`.",
        "",
        "## Machine",
        "",
        *machine_lines(load0),
        "",
        "## Runs",
        "",
        *runs,
        "",
        "## Milliseconds per trial",
        "",
        "Trial i's time runs from the end of trial i-1 to the end of trial i, over every trial of",
        "the study: the budget counts measurements, and repeats the sampler proposes are answered",
        "with the config's pooled estimate as free trials on top, so a budget of 1000 makes a study",
        "of about twice that. A transaction is one SQLAlchemy commit, reads included (asking a",
        "trial, claiming it, its parameters, its config, its result, the reads of the study).",
        "",
        *table(results),
        "",
        f"Where the time goes, from cProfile over a separate {args.profile_trials}-trial SQLite run",
        "(cumulative ms per trial; profiling slows everything, so read the parts against the",
        "profiled whole, not against the table above; parts overlap where one calls another):",
        "",
        "| part | ms per trial |",
        "|---|---|",
        *prof_lines,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
