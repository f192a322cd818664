"""The driver alone at 1,000 and 10,000 trials, on SQLite and PostgreSQL.

    python benchmarks/driver_scale.py [--sizes 1000,10000] [--probe 10]

A study is filled to SIZE finished trials (optuna add_trials with the configs, values and key
metrics a real trial stores), then the real driver loop (ask, TPE sample, precheck, record, tell,
and the study reads around them) runs PROBE more trials with the instant executor of
driver_overhead.py. The per-trial time at that size is what the driver costs a study of that
size. Writes docs/benchmarks/driver_scale.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution

sys.path.insert(0, str(Path(__file__).parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402
from driver_overhead import Clock, InstantExecutor, fake_result  # noqa: E402

from autotuner import api  # noqa: E402
from autotuner.api import load_spec, probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("AUTOTUNE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fill(study: optuna.Study, spec, n: int, rng: np.random.Generator) -> float:  # noqa: ANN001
    dists = {k: CategoricalDistribution(p.values()) for k, p in spec.space.items()}
    started = time.perf_counter()
    batch = []
    for _ in range(n):
        params = {k: d.choices[int(rng.integers(len(d.choices)))] for k, d in dists.items()}
        if params["backend"] == "onnxruntime-cpu" and params["precision"] == "bf16":
            params["precision"] = "fp32"
        res = fake_result(params, rng)
        attrs = {
            k: res.metrics[k]
            for k in (
                "throughput_items_s",
                "latency_p95_ms",
                "latency_p50_ms",
                "accuracy_cosine",
                "peak_memory_mb",
            )
        }
        batch.append(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                values=[res.metrics["throughput_items_s"], res.metrics["latency_p95_ms"]],
                user_attrs={"config": params, **attrs},
                system_attrs={"constraints:accuracy_cosine >= 0.99": 0.99 - res.metrics["accuracy_cosine"]},
            )
        )
        if len(batch) == 500:
            study.add_trials(batch)
            batch = []
    if batch:
        study.add_trials(batch)
    return time.perf_counter() - started


def one(url: str, size: int, probe_n: int, caps: dict) -> dict:
    name = f"scale-{uuid.uuid4().hex[:8]}"
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml", {"name": name})
    clock = Clock()
    study = api.open_study(spec, storage=url, caps=caps)
    try:
        fill_s = fill(study, spec, size, np.random.default_rng(0))
        t0 = time.perf_counter()
        api.search(
            spec,
            study,
            InstantExecutor(spec, caps),
            trials=size + probe_n,
            caps=caps,
            progress=clock,
            storage=url,
        )
        ends = [t0] + [e[1] for e in clock.ends]
        per = [b - a for a, b in zip(ends, ends[1:], strict=False)]
        t = time.perf_counter()
        study.get_trials(deepcopy=False)
        read_s = time.perf_counter() - t
        return {
            "size": size,
            "fill_s": fill_s,
            "per_trial_p50_ms": statistics.median(per) * 1e3,
            "per_trial_max_ms": max(per) * 1e3,
            "get_trials_ms": read_s * 1e3,
        }
    finally:
        optuna.delete_study(study_name=name, storage=url)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--probe", type=int, default=10)
    args = ap.parse_args()
    load_start = load_average()
    caps = probe()
    rows = []
    with tempfile.TemporaryDirectory(prefix="autotune-scale-") as d:
        for label, url in (("SQLite", f"sqlite:///{d}/scale.db"), ("PostgreSQL", PG)):
            for size in (int(s) for s in args.sizes.split(",")):
                r = {"storage": label, **one(url, size, args.probe, caps)}
                print(r, flush=True)
                rows.append(r)
    lines = [
        "# The driver alone at 1,000 and 10,000 trials",
        "",
        "Produced by `python benchmarks/driver_scale.py`. The study is filled to the size first",
        "(add_trials), then the real driver loop with TPE runs 10 more trials with an instant",
        "executor; the per-trial time is the driver's own cost (sampling, storage, the reads of",
        "the study) at that size.",
        "",
        "## Machine",
        "",
        *machine_lines(load_start),
        "",
        "| storage | trials in study | fill s | per trial p50 ms | per trial max ms | one get_trials ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['storage']} | {r['size']} | {r['fill_s']:.1f} | {r['per_trial_p50_ms']:.0f} | "
            f"{r['per_trial_max_ms']:.0f} | {r['get_trials_ms']:.0f} |"
        )
    write_doc("driver_scale.md", lines)


if __name__ == "__main__":
    main()
