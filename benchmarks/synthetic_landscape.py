"""A semi-synthetic landscape of thousands of configs, fitted from a recorded one.

    python benchmarks/synthetic_landscape.py [--from benchmarks/landscapes/tiny.jsonl]
        [--spec benchmarks/landscapes/synthetic.yaml] [-o benchmarks/landscapes/synthetic.json]
    python benchmarks/synthetic_landscape.py --add-short benchmarks/landscapes/tiny5.jsonl

Fits, on the recorded landscape (every config, several rounds, record_landscape.py), a least-squares
model of log throughput over one-hot values and every pair of knobs (numpy lstsq, minimum norm),
and a model of the per-config spread between rounds (log of the standard deviation of log
throughput over one-hot values: heteroscedastic noise) with its residual scatter. The knobs the
recording does not have (ONNX Runtime graph level, execution mode, inter-op threads, static int8
and its calibration, per-channel, excluded layers) get effects that are set, not fitted, each
written in the construction under "set" with where its size comes from. The construction is a
small JSON; `generate` rebuilds the same landscape in memory from it (seeded): every config of the
spec's space, `rounds` rounds each (the last `truth_rounds` of them for search_quality.py
--truth-rounds). With --add-short, a landscape recorded with short blocks as well, each config
also gets 4 short blocks (what a first look is answered with): its fitted value shifted by the
median log bias of short blocks there, with the spread scaled by their median spread ratio, drawn
from a generator of their own (the trial-length rounds are the same with or without them).
Construction: docs/benchmarks/synthetic_landscape.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

FITTED = ("backend", "precision", "batch_size", "threads")
# Set effects on log throughput (not in any recording here). Sizes: the held-out model
# (static int8 at `all` about 5x int8 at `basic`, QDQ pairs fused), ONNX Runtime's usual
# ordering of levels, and oversubscription of 2 cores by parallel inter-op threads.
SET: dict[str, Any] = {
    "graph_level": {"disable": -0.35, "basic": -0.1, "extended": 0.0, "all": 0.03},
    "int8_static_x_graph_level": {"disable": -1.0, "basic": -0.8, "extended": 0.3, "all": 0.8},
    "parallel_x_inter_op_threads": {"1": -0.05, "2": 0.02, "4": -0.04, "8": -0.15},
    "per_channel_x_graph_level_all": -0.12,
    "int8_exclude_ffn": -0.3,
    "int8_static_vs_dynamic_torch": 0.05,
    "accuracy_cosine_int8_static": {"minmax": 0.993, "percentile": 0.995, "entropy": 0.990},
    "accuracy_cosine_per_channel_false": -0.006,
    "accuracy_cosine_int8_exclude_ffn": 0.004,
    "batch_beyond_recorded": "log-linear in log2(batch) from the last two recorded values",
    "sources": "docs/benchmarks/synthetic_landscape.md",
}


def _features(config: dict[str, Any]) -> list[str]:
    mains = [f"{k}={config[k]}" for k in FITTED]
    return ["1", *mains, *(f"{a}|{b}" for a, b in itertools.combinations(mains, 2))]


def _solve(rows: list[list[str]], ys: list[float]) -> dict[str, float]:
    import numpy as np  # noqa: PLC0415 (a benchmark's heavy import, used here only)

    names = sorted({f for r in rows for f in r})
    index = {n: i for i, n in enumerate(names)}
    x = np.zeros((len(rows), len(names)))
    for i, r in enumerate(rows):
        for f in r:
            x[i, index[f]] = 1.0
    coef, *_ = np.linalg.lstsq(x, np.array(ys), rcond=None)
    return {n: float(c) for n, c in zip(names, coef, strict=True)}


def fit(recorded: str, metric: str = "throughput_items_s") -> dict[str, Any]:
    """Mean and spread models fitted on the recorded landscape's clean trial-length rounds."""
    from autotuner.execution.replay import load_landscape

    rows, ys, sd_rows, sds, acc, measure = [], [], [], [], {}, []
    for recs in load_landscape(recorded).values():
        ok = [r for r in recs if "metrics" in r and not r.get("under_load") and r.get("fidelity") != "short"]
        if len(ok) < 2:
            continue
        logs = [math.log(float(r["metrics"][metric])) for r in ok]
        feats = _features(ok[0]["config"])
        rows += [feats] * len(logs)
        ys += logs
        sd_rows.append(feats[:5])
        sds.append(math.log(max(statistics.stdev(logs), 1e-4)))
        c = ok[0]["config"]
        acc.setdefault(f"{c['backend']}|{c['precision']}", []).append(
            statistics.mean(float(r["metrics"].get("accuracy_cosine", 1.0)) for r in ok)
        )
        measure += [float(r.get("measure_s") or 0.0) for r in ok]
    mean = _solve(rows, ys)
    spread = _solve(sd_rows, sds)
    resid = [s - sum(spread.get(f, 0.0) for f in r) for r, s in zip(sd_rows, sds, strict=True)]
    fitted_resid = [y - sum(mean.get(f, 0.0) for f in r) for r, y in zip(rows, ys, strict=True)]
    return {
        "fitted_from": recorded,
        "metric": metric,
        "mean_log": mean,
        "spread_log_sd": spread,
        "spread_scatter": statistics.stdev(resid),
        "mean_fit_rms": math.sqrt(statistics.mean(e * e for e in fitted_resid)),
        "accuracy_cosine": {k: statistics.mean(v) for k, v in acc.items()},
        "measure_s": statistics.median(measure),
        "configs_fitted": len(sd_rows),
        "set": SET,
    }


def fit_short(recorded: str, metric: str = "throughput_items_s") -> dict[str, Any]:
    """How a short block (record_landscape.py --short-s) departs from a trial-length one, fitted on
    a recorded landscape that has both: the median log bias of a config's short blocks against its
    trial-length ones, and the median ratio of their spreads (log sd)."""
    from autotuner.execution.replay import load_landscape

    bias, ratio, block_s = [], [], []
    for recs in load_landscape(recorded).values():
        clean = [r for r in recs if "metrics" in r and not r.get("under_load")]
        full = [math.log(float(r["metrics"][metric])) for r in clean if r.get("fidelity") != "short"]
        short = [math.log(float(r["metrics"][metric])) for r in clean if r.get("fidelity") == "short"]
        block_s += [float(r["block_s"]) for r in clean if r.get("fidelity") == "short"]
        if len(full) >= 2 and len(short) >= 2:
            bias.append(statistics.mean(short) - statistics.mean(full))
            ratio.append(statistics.stdev(short) / max(statistics.stdev(full), 1e-4))
    if not bias:
        print(f"{recorded}: no config has two short and two trial-length blocks", file=sys.stderr)
        raise SystemExit(2)
    return {
        "fitted_from": recorded,
        "log_bias": statistics.median(bias),
        "sd_ratio": statistics.median(ratio),
        "block_s": statistics.median(block_s),
        "configs_fitted": len(bias),
        "rounds": 4,
    }


def _fitted_value(model: dict[str, float], config: dict[str, Any], batches: list[int]) -> float:
    """The fitted model at a config; a batch beyond the recorded ones extrapolated log-linearly."""
    b = int(config["batch_size"])
    if b in batches:
        return sum(model.get(f, 0.0) for f in _features(config))
    lo, hi = batches[-2], batches[-1]
    at = {x: _fitted_value(model, {**config, "batch_size": x}, batches) for x in (lo, hi)}
    slope = (at[hi] - at[lo]) / (math.log2(hi) - math.log2(lo))
    return at[hi] + slope * (math.log2(b) - math.log2(hi))


def true_log(c: dict[str, Any], config: dict[str, Any], batches: list[int]) -> tuple[float, float]:
    """(log throughput, accuracy_cosine) of a config: fitted part plus the set effects."""
    s = c["set"]
    base = dict(config)
    static = config["precision"] == "int8"
    if static:
        base["precision"] = "int8-dynamic"
    mu = _fitted_value(c["mean_log"], base, batches)
    acc = c["accuracy_cosine"].get(f"{base['backend']}|{base['precision']}", 1.0)
    if config["backend"] == "onnxruntime-cpu":
        level = config["graph_optimization_level"]
        mu += s["int8_static_x_graph_level"][level] if static else s["graph_level"][level]
        if config["execution_mode"] == "parallel":
            mu += s["parallel_x_inter_op_threads"][str(config["inter_op_threads"])]
        if static and config["per_channel"] and level == "all":
            mu += s["per_channel_x_graph_level_all"]
    elif static:
        mu += s["int8_static_vs_dynamic_torch"]
    if static:
        acc = s["accuracy_cosine_int8_static"].get(config["calibration"], 0.99)
        acc += 0.0 if config["per_channel"] else s["accuracy_cosine_per_channel_false"]
        if config["int8_exclude"] != "none":
            mu += s["int8_exclude_ffn"]
            acc += s["accuracy_cosine_int8_exclude_ffn"]
    return mu, acc


def construction_batches(c: dict[str, Any]) -> list[int]:
    """The batch sizes the construction's fitted terms know (true_log extrapolates from them)."""
    return sorted(
        {int(f.split("=")[1]) for f in c["mean_log"] if f.startswith("batch_size=") and "|" not in f}
    )


def generate(c: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The landscape, by config key, as record_landscape.py would have written it: the same for
    the same construction (its seed). Configs the runners refuse are written as refusals."""
    from record_landscape import landscape_spec

    from autotuner.api import load_spec, precheck
    from autotuner.search.space import all_configs
    from autotuner.spec.schema import config_key

    spec = landscape_spec(load_spec(c["spec"]))
    caps = c["caps"]
    batches = construction_batches(c)
    rng = random.Random(c["seed"])
    short = c.get("short")
    short_rng = random.Random(c["seed"] + 1)
    out: dict[str, list[dict[str, Any]]] = {}
    for config in all_configs(spec) or []:
        refused = precheck(spec, config, caps)
        if refused is not None:
            rec = {"config": config, "round": 0, "failure_class": refused.failure_class}
            out[config_key(config)] = [rec | {"message": refused.failure_message}]
            continue
        mu, acc = true_log(c, config, batches)
        spread = c["spread_log_sd"]
        sd = math.exp(
            sum(spread.get(f, 0.0) for f in _features(config)[:5]) + c["spread_scatter"] * rng.gauss(0, 1)
        )
        recs = []
        for r in range(c["rounds"]):
            thr = math.exp(mu + sd * rng.gauss(0, 1))
            m = {
                c["metric"]: thr,
                "latency_p95_ms": 1000.0 * int(config["batch_size"]) / thr * (1 + 2 * sd),
                "accuracy_cosine": acc,
                "measure_s": c["measure_s"],
            }
            recs.append({"config": config, "round": r, "metrics": m, "measure_s": c["measure_s"]})
        if short is not None:  # its own generator: the trial-length rounds stay as they were
            for r in range(short["rounds"]):
                thr = math.exp(mu + short["log_bias"] + sd * short["sd_ratio"] * short_rng.gauss(0, 1))
                m = {
                    c["metric"]: thr,
                    "latency_p95_ms": 1000.0 * int(config["batch_size"]) / thr * (1 + 2 * sd),
                    "measure_s": short["block_s"],
                }
                recs.append(
                    {
                        "config": config,
                        "round": r,
                        "metrics": m,
                        "measure_s": short["block_s"],
                        "fidelity": "short",
                        "block_s": short["block_s"],
                    }
                )
        out[config_key(config)] = recs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="recorded", default="benchmarks/landscapes/tiny.jsonl")
    ap.add_argument("--spec", default="benchmarks/landscapes/synthetic.yaml")
    ap.add_argument("-o", "--output", default="benchmarks/landscapes/synthetic.json")
    ap.add_argument("--rounds", type=int, default=10, help="rounds per config, truth rounds included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--add-short",
        default=None,
        metavar="RECORDED",
        help="add short blocks fitted on this recorded landscape to the construction at -o, which "
        "is otherwise kept as it is (no refit)",
    )
    args = ap.parse_args()
    if args.add_short is not None:
        out = Path(args.output)
        if not out.exists() or not Path(args.add_short).exists():
            print(f"{out if not out.exists() else args.add_short}: no such file", file=sys.stderr)
            raise SystemExit(2)
        c = json.loads(out.read_text())
        c["short"] = fit_short(args.add_short)
        out.write_text(json.dumps(c, indent=1, sort_keys=True) + "\n")
        print(f"{out}: short blocks added, fitted on {c['short']['configs_fitted']} configs: {c['short']}")
        return
    for p in (args.recorded, args.spec):
        if not Path(p).exists():
            print(f"{p}: no such file", file=sys.stderr)
            raise SystemExit(2)
    if args.rounds < 3:
        print(f"--rounds: {args.rounds} leaves no rounds to hold out (at least 3)", file=sys.stderr)
        raise SystemExit(2)
    c = fit(args.recorded) | {"spec": args.spec, "rounds": args.rounds, "seed": args.seed}
    c["caps"] = json.loads(Path(args.recorded).with_suffix(".caps.json").read_text())
    Path(args.output).write_text(json.dumps(c, indent=1, sort_keys=True) + "\n")
    land = generate(c)
    runnable = sum(1 for recs in land.values() if "metrics" in recs[0])
    print(
        f"wrote {args.output}: {len(land)} configs ({runnable} runnable) x {args.rounds} rounds; "
        f"fitted on {c['configs_fitted']} configs of {args.recorded}, mean fit rms {c['mean_fit_rms']:.3f} "
        f"(log), spread scatter {c['spread_scatter']:.3f}"
    )


if __name__ == "__main__":
    main()
