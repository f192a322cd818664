"""How often the real driver and race name the true best config, replayed on a recorded landscape.

    python benchmarks/search_quality.py --spec SPEC --landscape FILE.jsonl --seeds 50 [--json]
        [--truth-rounds T]

The landscape (benchmarks/record_landscape.py) holds every config of the space measured in several
rounds in fresh processes. With --truth-rounds T (T > 0) a config's true value is its mean over
its last T rounds, which the replay never draws (autotuner.execution.replay.split_rounds); the
replay draws from the others. A landscape with fewer than T + 2 rounds for some runnable config
is refused (exit 2). With T = 0 the truth is the mean over every round, the same rounds the replay
draws from: the figures are marked "self-graded". A FILE.json (benchmarks/synthetic_landscape.py's
fitted construction) is generated in memory. Each run drives
the real search and pick stages (autotuner.api.search, autotuner.api.choose) with a replay
executor that answers a config with one of its recorded rounds drawn at random, so the noise is
the machine's own. Per strategy it prints:

- p_best: P(the pick's true mean is within 2% of the best config's, or the landscape's own
  rounds cannot tell the two apart: Welch 95% interval of the difference includes 0);
- p_within_2pct: the same without the statistical-tie clause;
- median_regret, worst_regret: (best - pick) / best on the true means (0 = the best);
- measure_s_ratio: timed measurement seconds the run spent (search and race), relative to
  measuring every config of the grid once for as long as its recorded trials did.

Strategies: default (the spec as written), tpe, random, grid, gp (Optuna's GPSampler),
naive-tpe (tpe without the race: the best pooled estimate, as a one-shot pick would do), and
first-look (the spec with measurement.first_look_s at a quarter of min_time_s: each new config a
short first look, answered from the landscape's short blocks, and a trial-length block only for
those that may still win), no-first-look (the spec without first looks), and first-look-x4
(first looks and four times the spec's trials: about the same measurement seconds, more configs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

STRATEGIES = (
    "default",
    "tpe",
    "random",
    "grid",
    "gp",
    "naive-tpe",
    "first-look",
    "no-first-look",
    "first-look-x4",
)
# first-look: the spec as written, with a short first look of a quarter of min_time_s per new config
# (measurement.first_look_s); the landscape needs short blocks of that length (record_landscape.py
# --short-s), which the replay answers first looks with. no-first-look: the spec as written, every
# new config measured at full length. first-look-x4: first looks, and four times the spec's trials
# (a look costs about a quarter of a trial's measurement: as many seconds buy more configs).
FIRST_LOOK_SHARE = 0.25
TIE_PCT = 0.02


def truth(spec: Any, landscape: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per config: mean of the rule metric over the rounds given (the held-out ones, or all when
    self-graded), its values, feasibility. Short blocks are never part of the truth."""
    o = spec.objectives[0]
    limit = spec.measurement.max_foreign_load
    out = {}
    for key, recs in landscape.items():
        ok = [r for r in recs if "metrics" in r and r.get("fidelity") != "short"]
        clean = [
            r for r in ok if not r.get("under_load") and not (r["metrics"].get("foreign_load", 0) > limit)
        ]
        # The truth rests on blocks no other process disturbed (the replay still draws them all).
        ok = clean or ok
        if not ok:
            continue
        vals = [float(r["metrics"][o.metric]) for r in ok if o.metric in r["metrics"]]
        means = {}
        for c in spec.constraints:
            vs = [float(r["metrics"][c.metric]) for r in ok if c.metric in r["metrics"]]
            means[c.metric] = sum(vs) / len(vs) if vs else math.nan
        feasible = all(c.violation(means[c.metric]) <= 0 for c in spec.constraints)
        out[key] = {
            "config": ok[0]["config"],
            "mean": sum(vals) / len(vals),
            "values": vals,
            "feasible": feasible,
            "measure_s": statistics.mean(float(r.get("measure_s") or 0.0) for r in ok),
        }
    return out


def exact_truth(
    spec: Any, landscape_path: str, landscape: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """A synthetic construction's truth, with no noise: per runnable config of the landscape
    generated from it, exp of its true log mean (the median of its log-normal blocks) and its set
    accuracy. No tie clause applies (no values): the best or a tie is being within 2% of the best."""
    from synthetic_landscape import construction_batches, true_log

    if not landscape_path.endswith(".json"):
        print(f"{landscape_path}: --exact-truth needs a synthetic construction (.json)", file=sys.stderr)
        raise SystemExit(2)
    c = json.loads(Path(landscape_path).read_text())
    batches = construction_batches(c)
    out = {}
    for key, recs in landscape.items():
        if not any("metrics" in r for r in recs):
            continue  # refused by the runners' checks
        config = recs[0]["config"]
        mu, acc = true_log(c, config, batches)
        means = {"accuracy_cosine": acc}
        feasible = all(c_.violation(means.get(c_.metric, math.nan)) <= 0 for c_ in spec.constraints)
        out[key] = {
            "config": config,
            "mean": math.exp(mu),
            "values": [],
            "feasible": feasible,
            "measure_s": float(c["measure_s"]),
        }
    return out


def read_landscape(landscape_path: str) -> dict[str, list[dict[str, Any]]]:
    """A recorded .jsonl, or a synthetic construction (.json) generated in memory from its seed."""
    if landscape_path.endswith(".json"):
        from synthetic_landscape import generate

        return generate(json.loads(Path(landscape_path).read_text()))
    from autotuner.execution.replay import load_landscape

    return load_landscape(landscape_path)


def split(landscape_path: str, truth_rounds: int) -> tuple[dict, dict]:
    """(replayed, graded) landscapes: held out when truth_rounds > 0, else both the whole file."""
    from autotuner.execution.replay import split_rounds, trial_rounds

    land = read_landscape(landscape_path)
    if truth_rounds <= 0:
        return land, land
    fewest = min((len(trial_rounds(r)) for r in land.values() if trial_rounds(r)), default=0)
    if fewest < truth_rounds + 2:
        print(
            f"{landscape_path}: --truth-rounds {truth_rounds} needs {truth_rounds + 2} recorded rounds "
            f"per config (some have {fewest}); record more with record_landscape.py --append",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return split_rounds(land, truth_rounds)


def landscape_caps(landscape_path: str) -> dict[str, Any]:
    """The recording machine's capabilities (record_landscape.py writes them beside the file; a
    synthetic construction carries those of the landscape it was fitted on)."""
    if landscape_path.endswith(".json"):
        return json.loads(Path(landscape_path).read_text())["caps"]
    p = Path(landscape_path).with_suffix(".caps.json")
    if p.exists():
        return json.loads(p.read_text())
    from autotuner.execution.capabilities import probe

    return probe()


def welch_tie(a: list[float], b: list[float]) -> bool:
    """Whether the Welch 95% interval of mean(a) - mean(b) holds 0 (SciPy's t quantile)."""
    from autotuner.search.stats import welch_difference

    if len(a) < 2 or len(b) < 2:
        return False
    _, lo, hi = welch_difference(a, b, 0.95)
    return lo <= 0 <= hi


def strategy_spec(spec_path: str, strategy: str) -> Any:
    from record_landscape import landscape_spec

    from autotuner.api import load_spec, spec_from_dict
    from autotuner.spec.loading import spec_to_dict

    spec = landscape_spec(load_spec(spec_path))
    d = spec_to_dict(spec)
    d.pop("storage", None)
    if strategy == "default":
        return spec_from_dict(d, "strategy")
    if strategy in ("first-look", "no-first-look", "first-look-x4"):
        m = d.setdefault("measurement", {})
        look = round(FIRST_LOOK_SHARE * spec.measurement.min_time_s, 6)
        m["first_look_s"] = None if strategy == "no-first-look" else look
        if strategy == "first-look-x4":
            d["budget"] = {**d.get("budget", {}), "trials": 4 * spec.budget.trials}
        return spec_from_dict(d, "strategy")
    d["sampler"] = {"type": "tpe" if strategy == "naive-tpe" else strategy}
    if strategy == "naive-tpe":
        d["pick"] = {**d.get("pick", {}), "rounds": 0}
    return spec_from_dict(d, "strategy")


def replayed_run(
    spec: Any, caps: dict[str, Any], landscape: dict[str, Any], seed: int, name: str
) -> tuple[Any, ...]:
    """The real search and pick from scratch against a replayed landscape, in an in-memory study:
    (the study, the replay executor, the pick, the search's measurement seconds). `name` names the
    study, and with it the driver's journal in the cache: runs side by side need names of their own."""
    import optuna

    from autotuner import api
    from autotuner.execution.replay import ReplayExecutor
    from autotuner.progress import Progress

    ex = ReplayExecutor(spec, caps, landscape, seed=seed)
    study = optuna.create_study(
        study_name=name,
        storage=optuna.storages.InMemoryStorage(),
        directions=[o.direction for o in spec.objectives],
    )
    study.set_user_attr("sampler_seed", seed)
    quiet = Progress(quiet=True)
    api.search(spec, study, ex, caps=caps, progress=quiet, storage="sqlite:///:memory:")
    search_s = ex.measure_s
    return study, ex, api.choose(spec, study, None, ex, quiet), search_s


def seeded_spec(spec_path: str, strategy: str, seed: int) -> Any:
    """The strategy's spec with the sampler's seed fixed."""
    from autotuner.api import spec_from_dict
    from autotuner.spec.loading import spec_to_dict

    return spec_from_dict({**spec_to_dict(strategy_spec(spec_path, strategy)), "seed": seed}, "strategy")


def one_run(args: tuple[Any, ...]) -> dict[str, Any]:
    """One seeded run of the real driver and pick against the replayed landscape."""
    spec_path, landscape_path, strategy, seed = args[:4]
    truth_rounds = int(args[4]) if len(args) > 4 else 0
    spec = seeded_spec(spec_path, strategy, seed)
    landscape, _ = split(landscape_path, truth_rounds)
    started = time.monotonic()
    study, ex, pick, search_s = replayed_run(
        spec,
        landscape_caps(landscape_path),
        landscape,
        seed,
        f"{Path(landscape_path).stem}-{strategy}-{seed}",
    )
    return {
        "strategy": strategy,
        "seed": seed,
        "config": pick.config if pick else None,
        "measure_s": ex.measure_s,
        "search_measure_s": search_s,
        "blocks": ex.blocks,
        "trials": len(study.trials),
        "wall_s": time.monotonic() - started,
        "served_truth": sum(1 for k, r, _ in ex.served if (k, r) in held(landscape_path, truth_rounds)),
    }


_HELD: dict[tuple[str, int], set[tuple[str, int]]] = {}


def held(landscape_path: str, truth_rounds: int) -> set[tuple[str, int]]:
    """(config key, round) of the held-out truth rounds: the replay must serve none of them."""
    if (landscape_path, truth_rounds) not in _HELD:
        _, graded = split(landscape_path, truth_rounds)
        _HELD[(landscape_path, truth_rounds)] = (
            {(k, int(r["round"])) for k, recs in graded.items() for r in recs if "metrics" in r}
            if truth_rounds > 0
            else set()
        )
    return _HELD[(landscape_path, truth_rounds)]


def evaluate(
    spec_path: str, landscape_path: str, seeds: int, strategies: list[str], jobs: int, truth_rounds: int = 0
) -> list[dict]:
    from autotuner.search.estimates import config_key

    spec = strategy_spec(spec_path, "default")
    replayed, graded = split(landscape_path, truth_rounds)
    has_short = any(r.get("fidelity") == "short" for recs in replayed.values() for r in recs)
    looks = [s for s in strategies if strategy_spec(spec_path, s).measurement.first_look_s is not None]
    if looks and not has_short:
        print(
            f"{landscape_path}: no short blocks, and strategy {looks[0]!r} takes first looks "
            "(measurement.first_look_s); record them with record_landscape.py --append --short-s S",
            file=sys.stderr,
        )
        raise SystemExit(2)
    t = exact_truth(spec, landscape_path, graded) if truth_rounds < 0 else truth(spec, graded)
    o = spec.objectives[0]
    sign = 1.0 if o.direction == "maximize" else -1.0
    feas = {k: v for k, v in t.items() if v["feasible"]}
    best_key = max(feas, key=lambda k: sign * feas[k]["mean"])
    best = feas[best_key]
    # One grid pass costs what the replayed trial-length blocks cost (the same blocks either way).
    rep = truth(spec, replayed)
    grid_s = sum(v["measure_s"] for v in rep.values())
    work = [(spec_path, landscape_path, s, seed, truth_rounds) for s in strategies for seed in range(seeds)]
    with tempfile.TemporaryDirectory(prefix="autotune-sq-") as cache:
        os.environ["AUTOTUNE_CACHE_DIR"] = cache  # the driver's journal stays out of the user's cache
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            runs = list(pool.map(one_run, work, chunksize=4))
    out = []
    for s in strategies:
        mine = [r for r in runs if r["strategy"] == s]
        regrets, hits, within = [], 0, 0
        for r in mine:
            k = config_key(r["config"]) if r["config"] else None
            got = t.get(k) if k else None
            if got is None or not got["feasible"]:
                regrets.append(1.0)
                continue
            reg = max(0.0, sign * (best["mean"] - got["mean"]) / abs(best["mean"]))
            regrets.append(reg)
            close = reg <= TIE_PCT
            within += close
            hits += close or welch_tie(got["values"], best["values"])
        out.append(
            {
                "strategy": s,
                "p_best": round(hits / len(mine), 3),
                "p_within_2pct": round(within / len(mine), 3),
                "median_regret": round(statistics.median(regrets), 4),
                "worst_regret": round(max(regrets), 4),
                "measure_s_ratio": round(statistics.median(r["measure_s"] for r in mine) / grid_s, 3),
                "search_measure_s_ratio": round(
                    statistics.median(r["search_measure_s"] for r in mine) / grid_s, 3
                ),
                "median_blocks": statistics.median(r["blocks"] for r in mine),
                "runs": len(mine),
                "graded": graded_as(truth_rounds),
                "served_truth_blocks": sum(r["served_truth"] for r in mine),
                "median_wall_s": round(statistics.median(r["wall_s"] for r in mine), 2),
            }
        )
    # The noise floor: every replayed round of every config measured (a grid pass per round) and
    # the best mean taken. With a held-out truth, what even that exhaustive pick loses.
    rep_feas = [k for k, v in rep.items() if v["feasible"] and k in t]
    floor_key = max(rep_feas, key=lambda k: sign * rep[k]["mean"]) if rep_feas else None
    floor = (
        round(max(0.0, sign * (best["mean"] - t[floor_key]["mean"]) / abs(best["mean"])), 4)
        if floor_key
        else None
    )
    meta = {
        "every_round_regret": floor,
        "best": best["config"],
        "best_mean": round(best["mean"], 4),
        "metric": o.metric,
        "configs": len(t),
        "feasible": len(feas),
        "grid_measure_s": round(grid_s, 2),
        "graded": graded_as(truth_rounds),
    }
    return [meta, *out]


def graded_as(truth_rounds: int) -> str:
    if truth_rounds < 0:
        return "exact truth"
    return f"held-out {truth_rounds} rounds" if truth_rounds > 0 else "self-graded"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True)
    ap.add_argument("--landscape", required=True)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json", action="store_true", help="one JSON object per strategy")
    ap.add_argument(
        "--truth-rounds", type=int, default=0, help="hold out each config's last T rounds as the truth"
    )
    ap.add_argument(
        "--exact-truth",
        action="store_true",
        help="synthetic constructions only: grade against the noise-free truth (every round replayed)",
    )
    args = ap.parse_args()
    if args.exact_truth:
        args.truth_rounds = -1
    strategies = [s for s in args.strategies.split(",") if s]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        print(f"--strategies: {bad[0]!r} is not one of {', '.join(STRATEGIES)}", file=sys.stderr)
        raise SystemExit(2)
    started = time.monotonic()
    meta, *rows = evaluate(args.spec, args.landscape, args.seeds, strategies, args.jobs, args.truth_rounds)
    wall = time.monotonic() - started
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    print(
        f"{Path(args.landscape).name}: {meta['configs']} configs ({meta['feasible']} feasible); true best "
        f"{meta['metric']}={meta['best_mean']:.4g} at {meta['best']}; {args.seeds} seeds; {wall:.0f} s; "
        f"{meta['graded']}; the best mean over every replayed round loses {meta['every_round_regret']}"
    )
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))


if __name__ == "__main__":
    main()
