"""The driver's own cost per trial, without running any model.

Runs the real `autotuner.search.driver.drive` loop (ask, suggest, precheck, record/tell, best_line,
storage reads and writes) over the quickstart spec's space with the TPE sampler from `make_sampler`, but
with an executor that answers at once with a made-up TrialResult: every metric name of
autotuner/metrics.py with plausible values for the config, and 200 latency samples, as a real
trial writes them. Time spent per trial is therefore all driver + Optuna + storage.

    python benchmarks/driver_overhead.py                 # SQLite, 1000 trials
    python benchmarks/driver_overhead.py --pg-trials 100 # and PostgreSQL, 100 trials

The parts are timed by wrapping, in this process only, study.ask and the module-level names the
driver calls (suggest, precheck, record, best_line); "other" is the rest of a trial's wall time
(get_trials + counted at the loop top and after ask, the owner system attr, the executor round
trip). Trial i's wall time runs from the end of trial i-1 to the end of trial i.
"""

from __future__ import annotations

import argparse
import math
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

import autotuner.search.driver as driver  # noqa: E402
from autotuner.execution import Executor, TrialRequest  # noqa: E402
from autotuner.execution.capabilities import probe  # noqa: E402
from autotuner.execution.harness import keep, summarize  # noqa: E402
from autotuner.metrics import HARNESS_METRICS  # noqa: E402
from autotuner.progress import Progress  # noqa: E402
from autotuner.result import TrialResult  # noqa: E402
from autotuner.spec.loading import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "quickstart.yaml"
DOC = ROOT / "docs" / "benchmarks" / "driver_overhead.md"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"  # SQLAlchemy 2.1 picks psycopg 3
PARTS = ("ask", "suggest", "precheck", "record", "best_line")
COUNTS = ("commits", "record_commits")
N_SAMPLES = 200

# Rough per-item cost (ms) and accuracy of each backend/precision, so that the fake results
# give the sampler a landscape with structure, as real ones do.
PER_ITEM_MS = {
    ("torch-eager", "fp32"): 1.6,
    ("torch-eager", "bf16"): 2.4,
    ("torch-eager", "int8"): 1.0,
    ("onnxruntime-cpu", "fp32"): 1.2,
    ("onnxruntime-cpu", "int8"): 0.7,
}
COSINE = {"fp32": 1.0, "bf16": 0.9995, "int8": 0.993}


def fake_result(config: dict[str, Any], rng: np.random.Generator) -> TrialResult:
    bs = int(config.get("batch_size", 1))
    threads = int(config.get("threads") or 1)
    key = (config.get("backend"), config.get("precision", "fp32"))
    per_item = PER_ITEM_MS.get(key, 1.5) * (0.6 if threads == 2 else 1.0)
    p50 = 0.3 + bs * per_item * float(rng.lognormal(0.0, 0.05))
    ms = p50 * rng.lognormal(0.0, 0.04, size=N_SAMPLES)
    metrics = summarize(ms, bs, float(ms.sum()) / 1e3 + 0.01, stable=True)
    cos = COSINE[key[1]] - float(abs(rng.normal(0.0, 0.002 if key[1] == "int8" else 1e-5)))
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


class Parts:
    """Seconds spent in each timed part, per trial number."""

    def __init__(self) -> None:
        self.by_trial: dict[int, dict[str, float]] = {}
        self.current = -1
        self.in_record = False

    def add(self, part: str, seconds: float) -> None:
        d = self.by_trial.setdefault(self.current, dict.fromkeys(PARTS + COUNTS, 0.0))
        d[part] += seconds

    def commit(self, *_: Any) -> None:
        """SQLAlchemy 'commit' event: one storage transaction."""
        self.add("commits", 1)
        if self.in_record:
            self.add("record_commits", 1)


def instrument(parts: Parts) -> dict[str, Any]:
    """Wrap the names drive() looks up in autotuner.search.driver; returns the originals to restore."""
    saved = {name: getattr(driver, name) for name in ("suggest", "precheck", "record", "best_line")}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts.add(name, time.perf_counter() - t0)

        return wrapper

    def suggest(trial: Any, spec: Any) -> Any:
        parts.current = trial.number
        return timed("suggest", saved["suggest"])(trial, spec)

    driver.suggest = suggest
    for name in ("precheck", "best_line"):
        setattr(driver, name, timed(name, saved[name]))
    timed_record = timed("record", saved["record"])

    def record(*args: Any, **kwargs: Any) -> Any:
        parts.in_record = True
        try:
            return timed_record(*args, **kwargs)
        finally:
            parts.in_record = False

    driver.record = record
    return saved


def run_study(
    spec_path: Path, url: str, trials: int, study_name: str, caps: dict[str, Any]
) -> dict[str, Any]:
    base = load_spec(spec_path)
    # A batch range wide enough that the space outlasts the study: the driver ends a search once
    # every config is tried, and this benchmark is about the cost per trial at 1000 trials.
    space = {k: v.model_dump(exclude_none=True, exclude_defaults=True) for k, v in base.space.items()}
    space = {k: (v.get("choices") if set(v) == {"choices"} else v) for k, v in space.items()}
    space["batch_size"] = {"low": 1, "high": 512}
    spec = load_spec(spec_path, overrides={"study": study_name, "budget": {"trials": trials}, "space": space})
    progress = Clock()
    parts = Parts()
    t_open = time.perf_counter()
    study = driver.open_study(spec, url, caps, progress)
    open_s = time.perf_counter() - t_open
    ask = study.ask

    def timed_ask(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        trial = ask(*args, **kwargs)
        dt = time.perf_counter() - t0
        parts.current = trial.number
        parts.add("ask", dt)
        return trial

    study.ask = timed_ask  # type: ignore[method-assign]
    saved = instrument(parts)
    event.listen(Engine, "commit", parts.commit)
    executor = InstantExecutor(spec, caps, seed=spec.data_seed)
    session = driver.Session(spec, study, url, trials, caps, progress)
    started = time.perf_counter()
    try:
        driver.drive(session, executor, None)
    finally:
        event.remove(Engine, "commit", parts.commit)
        for name, fn in saved.items():
            setattr(driver, name, fn)
    total_s = time.perf_counter() - started
    rows = []
    prev = started
    for number, end, failure in progress.ends:
        p = parts.by_trial.get(number, dict.fromkeys(PARTS + COUNTS, 0.0))
        wall = end - prev
        prev = end
        rows.append({"number": number, "wall": wall, "failure": failure, **p})
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "rows": rows,
        "total_s": total_s,
        "open_s": open_s,
        "states": states,
        "launched": executor.launched,
        "study": study,
        "storage": study._storage,
    }


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
    out: dict[str, float] = {}
    for key in ("wall", *PARTS):
        xs = [r[key] for r in rows]
        out[f"{key}_p50"] = pct(xs, 50)
        out[f"{key}_p95"] = pct(xs, 95)
    ask_side = [r["ask"] + r["suggest"] + r["precheck"] for r in rows]
    tell_side = [r["record"] for r in rows]
    other = [r["wall"] - sum(r[p] for p in PARTS) for r in rows]
    for name, xs in (("ask_side", ask_side), ("tell_side", tell_side), ("other", other)):
        out[f"{name}_p50"] = pct(xs, 50)
        out[f"{name}_p95"] = pct(xs, 95)
    for key in COUNTS:
        out[key] = float(np.median([r[key] for r in rows]))
    out["n"] = len(rows)
    return out


def table(results: list[tuple[str, str, dict[str, float]]]) -> list[str]:
    head = (
        "| storage | trials | per trial p50 | p95 | ask+suggest+precheck p50 / p95 | "
        "record (set attrs + tell) p50 / p95 | best_line p50 / p95 | other p50 / p95 |"
    )
    lines = [head, "|" + "---|" * 8]
    for storage, label, s in results:
        lines.append(
            f"| {storage} | {label} | {s['wall_p50']:.1f} | {s['wall_p95']:.1f} | "
            f"{s['ask_side_p50']:.1f} / {s['ask_side_p95']:.1f} | "
            f"{s['tell_side_p50']:.1f} / {s['tell_side_p95']:.1f} | "
            f"{s['best_line_p50']:.1f} / {s['best_line_p95']:.1f} | "
            f"{s['other_p50']:.1f} / {s['other_p95']:.1f} |"
        )
    return lines


def detail(results: list[tuple[str, str, dict[str, float]]]) -> list[str]:
    lines = [
        "| storage | trials | ask p50 | suggest p50 | precheck p50 | record p50 | best_line p50 "
        "| transactions per trial | of them in record |"
    ]
    lines.append("|" + "---|" * 9)
    for storage, label, s in results:
        lines.append(
            f"| {storage} | {label} | {s['ask_p50']:.2f} | {s['suggest_p50']:.2f} | "
            f"{s['precheck_p50']:.2f} | {s['record_p50']:.2f} | {s['best_line_p50']:.2f} | "
            f"{s['commits']:.0f} | {s['record_commits']:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000, help="SQLite study size (default 1000)")
    ap.add_argument("--pg-trials", type=int, default=100, help="PostgreSQL study size; 0 skips it")
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--spec", type=Path, default=SPEC, help="spec whose space is searched")
    ap.add_argument("--out", type=Path, default=DOC)
    args = ap.parse_args(argv)
    load0 = load_average()

    # What precheck reads and the study records, probed in a child process as `autotune run` does.
    caps = probe()
    results: list[tuple[str, str, dict[str, float]]] = []
    runs: list[str] = []

    n = args.trials
    windows = [(1, min(100, n))]
    if n >= 500:
        windows.append((n // 2 - 99, n // 2))
    if n > 100:
        windows.append((n - 99, n))
    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        r = run_study(args.spec, url, n, "driver-overhead", caps)
        db_mb = Path(tmp, "bench.db").stat().st_size / 2**20
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
            optuna.delete_study(study_name=name, storage=r["storage"])
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
    for line in detail(results):
        print(line)

    doc = [
        "# Driver overhead per trial",
        "",
        "What the driver itself costs per trial, with no model run: the real `driver.drive` loop",
        "(`study.ask`, `suggest`, `precheck`, `record` = set every user attr + `study.tell`,",
        "`best_line`, the `get_trials`/`counted` reads, the owner system attr) over a spec's space",
        "with the sampler from `make_sampler` (TPE: multivariate, group, constant liar). The",
        "executor answers at once with a fake `TrialResult(ok=True)` holding",
        f"every metric of `autotuner/metrics.py` and {N_SAMPLES} latency samples. Configs the runners",
        "refuse (bf16 on onnxruntime-cpu) are recorded as PRUNED by `precheck` without reaching",
        "the executor, as in a real run.",
        "",
        f"- {describe(args.spec)}",
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
        'Trial i\'s time runs from the end of trial i-1 to the end of trial i. "other" is that time',
        "minus the timed parts: mostly the `study.get_trials()` + `counted()` reads at the loop top",
        "and after `ask`, the owner system attr, and the executor round trip (making the fake result).",
        "",
        *table(results),
        "",
        "Medians of the single parts (ms):",
        "",
        *detail(results),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
