"""The tuned dynamic batcher against batch-1 serving and against the batch scenario's best config,
at the same SLO, re-measured side by side in interleaved rounds; then the winner's rate/latency
curve.

    python benchmarks/serving.py [--rounds 3] [--tuned reports/serving.best.yaml] [--rate RPS]

--rate offers another rate than the spec's (the search, the side-by-side rounds and the batch
timeout of the served batch winner all use it) and writes docs/benchmarks/serving_RATErps.md.

1. The tuned config: `autotune run search_spaces/serving.yaml` from scratch in a temporary folder
   (or the params of a best-config YAML given with --tuned).
2. The batch scenario's best: the same backend timed back to back at batch 1, 4, 8, 16 and 32
   (the batch scenario), the batch with the highest throughput deployed as a server that waits
   for full batches (max_batch_size = that batch, batch_timeout_ms = the time the offered rate
   takes to fill it), one instance on every core: what taking the batch winner literally gives.
3. Batch-1 serving: max_batch_size 1, one instance on every core.
Each round measures the three in a rotated order, each in a fresh worker at the spec's rate, and
with the max-rate bisection on; medians over rounds. Writes docs/benchmarks/serving.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402

from autotuner.api import bench, run, spec_from_dict  # noqa: E402
from autotuner.progress import Progress  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "serving.yaml"
MAX_RATE = {"low": 5, "high": 200, "steps": 4, "duration_s": 1.5}
CURVE_RATES = (5, 10, 20, 40, 60, 80)


RATE: dict[str, float] = {}  # --rate: replaces the spec's rate_rps everywhere


def spec_dict(**serving: Any) -> dict[str, Any]:
    d = yaml.safe_load(SPEC.read_text())
    d["base_dir"] = str(SPEC.parent)
    d["serving"] = {**d["serving"], **RATE, **serving}
    return d


def serving_bench(config: dict[str, Any], **serving: Any) -> dict[str, float]:
    d = spec_dict(**serving)
    # The config is measured as given: the space holds exactly its values.
    d["space"] = {k: [v] for k, v in config.items()}
    _, result = bench(spec_from_dict(d, "benchmarks/serving.py"), config)
    if not result.ok:
        raise SystemExit(f"{config}: {result.failure_class}: {result.failure_message}")
    return result.metrics


def tuned_config(path: Path | None) -> tuple[dict[str, Any], str]:
    if path is not None:
        return dict(yaml.safe_load(path.read_text())["params"]), f"params of {path}"
    with tempfile.TemporaryDirectory(prefix="autotune-serving-") as tmp:
        import os

        old = os.getcwd()
        os.chdir(tmp)
        try:
            spec_path = Path(tmp) / "serving.yaml"
            d = spec_dict()
            d.pop("base_dir")
            spec_path.write_text(yaml.safe_dump(d, sort_keys=False))
            t0 = time.perf_counter()
            out = run(spec_path, progress=Progress(quiet=True))
            took = time.perf_counter() - t0
        finally:
            os.chdir(old)
    if out.pick is None:
        raise SystemExit("the search found no feasible config")
    return dict(out.pick.config), f"`autotune run search_spaces/serving.yaml` from scratch, {took:.0f} s"


def batch_scenario_best(backend: str, threads: int, rate: float) -> tuple[dict[str, Any], dict[int, float]]:
    """The batch size the batch scenario picks for this backend, deployed literally."""
    d = yaml.safe_load(SPEC.read_text())
    d["base_dir"] = str(SPEC.parent)
    for key in ("scenario", "serving"):
        d.pop(key, None)
    d["objectives"] = [{"metric": "throughput_items_s", "direction": "maximize"}]
    d["constraints"] = []
    d["pick"] = {"rounds": 0}
    throughput = {}
    for b in (1, 4, 8, 16, 32):
        cfg = {"backend": backend, "batch_size": b, "threads": threads}
        d["space"] = {k: [v] for k, v in cfg.items()}
        _, result = bench(spec_from_dict(copy.deepcopy(d), "benchmarks/serving.py"), cfg)
        if result.ok:
            throughput[b] = float(result.metrics["throughput_items_s"])
    best = max(throughput, key=throughput.__getitem__)
    fill_ms = 1000.0 * best / rate  # the time the offered rate takes to fill a batch of `best`
    config = {
        "backend": backend,
        "max_batch_size": best,
        "batch_timeout_ms": round(fill_ms, 1) if best > 1 else 0,
        "instances": 1,
        "threads": threads,
    }
    return config, throughput


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tuned", type=Path, help="a best-config YAML whose params are the tuned config")
    ap.add_argument("--rate", type=float, help="requests/s to offer instead of the spec's rate_rps")
    args = ap.parse_args()
    if args.rate is not None:
        RATE["rate_rps"] = args.rate
    load_start = load_average()
    base = spec_dict()
    rate, slo = float(base["serving"]["rate_rps"]), float(base["serving"]["slo_p95_ms"])

    tuned, how = tuned_config(args.tuned)
    print(f"tuned: {tuned} ({how})", flush=True)
    threads = int(tuned.get("threads") or 2)
    batch_best, sweep = batch_scenario_best(str(tuned["backend"]), threads, rate)
    print(f"batch scenario: {sweep} -> {batch_best}", flush=True)
    one = {
        "backend": tuned["backend"],
        "max_batch_size": 1,
        "batch_timeout_ms": 0,
        "instances": 1,
        "threads": threads,
    }
    configs = {
        "tuned dynamic batcher": tuned,
        "batch scenario's best, served": batch_best,
        "batch-1 serving": one,
    }

    rows: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    loads = []
    names = list(configs)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        loads.append(load_average())
        for name in order:
            m = serving_bench(configs[name], max_rate=MAX_RATE)
            rows[name].append(m)
            print(
                f"round {r + 1} {name}: p95 {m['request_latency_p95_ms']:.1f} ms, "
                f"goodput {m['goodput_requests_s']:.1f}/s, "
                f"max rate {m.get('max_rate_rps', float('nan')):.1f}/s",
                flush=True,
            )

    def med(name: str, key: str) -> float:
        return statistics.median(m[key] for m in rows[name] if key in m)

    winner = tuned
    curve = []
    for rps in CURVE_RATES:
        m = serving_bench(winner, rate_rps=rps)
        curve.append((rps, m))
        print(
            f"curve {rps}/s: p50 {m['request_latency_p50_ms']:.1f} p95 {m['request_latency_p95_ms']:.1f} ms",
            flush=True,
        )

    t_p95 = med("tuned dynamic batcher", "request_latency_p95_ms")
    t_rate = med("tuned dynamic batcher", "max_rate_rps")
    lines = [
        "# Serving: the tuned dynamic batcher against batch-1 serving and the batch scenario's best",
        "",
        f"MiniLM (all-MiniLM-L6-v2, 64-token requests), Poisson arrivals at {rate:g} requests/s "
        f"(seeded), p95 SLO {slo:g} ms, {threads} threads, `search_spaces/serving.yaml`. "
        f"Produced by `python benchmarks/serving.py --rounds {args.rounds}"
        + (f" --rate {args.rate:g}`." if args.rate is not None else "`."),
        "",
        "## Machine",
        "",
        *machine_lines(load_start),
        f"- load average before each round: {'; '.join(loads)}",
        "",
        "## The three configs",
        "",
        f"- tuned dynamic batcher: `{tuned}` ({how})",
        f"- batch scenario's best, served: `{batch_best}`; the batch scenario's throughput by batch "
        f"size (items/s, one back-to-back trial each): "
        + ", ".join(f"{b}: {v:.0f}" for b, v in sweep.items()),
        f"- batch-1 serving: `{one}`",
        "",
        f"## Side by side ({args.rounds} interleaved rounds, each config in a fresh worker; medians)",
        "",
        "| config | p95 latency at the rate (ms) | p99 (ms) | goodput (req/s) | mean batch "
        "| max rate within the SLO (req/s) | p95 vs tuned | max rate vs tuned |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        p95, rate_max = med(name, "request_latency_p95_ms"), med(name, "max_rate_rps")
        lines.append(
            f"| {name} | {p95:.1f} | {med(name, 'request_latency_p99_ms'):.1f} | "
            f"{med(name, 'goodput_requests_s'):.1f} | {med(name, 'mean_batch_size'):.2f} | {rate_max:.1f} | "
            f"{p95 / t_p95:.2f}x | {rate_max / t_rate:.2f}x |"
        )
    lines += [
        "",
        "Per round (p95 ms / max rate req/s):",
        "",
        *[
            f"- {name}: "
            + ", ".join(
                f"{m['request_latency_p95_ms']:.1f} / {m.get('max_rate_rps', 0):.1f}" for m in rows[name]
            )
            for name in names
        ],
        "",
        "## The winner's rate/latency curve",
        "",
        "| offered rate (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | achieved (req/s) | rejected |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {rps} | {m['request_latency_p50_ms']:.1f} | {m['request_latency_p95_ms']:.1f} | "
            f"{m['request_latency_p99_ms']:.1f} | {m['requests_s']:.1f} | "
            f"{m.get('rejected_requests', 0):.0f} |"
            for rps, m in curve
        ],
    ]
    write_doc("serving.md" if args.rate is None else f"serving_{args.rate:g}rps.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
