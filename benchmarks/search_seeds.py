"""Why a strategy misses, seed by seed: the pick's regret, the best the search measured, and the
knobs where the pick differs from the true best.

    python benchmarks/search_seeds.py --spec SPEC --landscape FILE [--truth-rounds T | --exact-truth]
        [--strategy default] [--seeds 30] [--misses]

Each seed runs the real driver and race against the replayed landscape, as
benchmarks/search_quality.py does. A line per seed: seed, the pick's regret on the truth, the
smallest regret among the configs the search measured (when it equals the pick's regret the race
chose the best it had; when it is lower the race missed it; when both are high the search never
reached the best), configs measured, measurement seconds of the search and of search and race,
and {knob: (pick, best)}. The last line: the share of picks within 2%, the worst regret, the share
of runs whose search measured a config within 2%.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import search_quality as sq  # noqa: E402


def one_seed(args: tuple[str, str, str, int, int]) -> tuple[Any, ...]:
    from autotuner.search.estimates import config_key
    from autotuner.study import records as rec

    spec_path, land_path, strategy, truth_rounds, seed = args
    spec = sq.seeded_spec(spec_path, strategy, seed)
    land, graded = sq.split(land_path, max(truth_rounds, 0))
    t = sq.exact_truth(spec, land_path, graded) if truth_rounds < 0 else sq.truth(spec, graded)
    sign = 1.0 if spec.objectives[0].direction == "maximize" else -1.0
    feas = {k: v for k, v in t.items() if v["feasible"]}
    best_key = max(feas, key=lambda k: sign * feas[k]["mean"])
    best = feas[best_key]["mean"]

    def regret(k: str | None) -> float:
        return max(0.0, sign * (best - feas[k]["mean"]) / abs(best)) if k in feas else 1.0

    name = f"seeds-{Path(land_path).stem}-{strategy}-{seed}"
    study, ex, pick, search_s = sq.replayed_run(spec, sq.landscape_caps(land_path), land, seed, name)
    measured = {config_key(rec.trial_config(tr)) for tr in study.trials}
    closest = min((regret(k) for k in measured), default=1.0)
    got = pick.config if pick else {}
    want = feas[best_key]["config"]
    diff = {n: (got.get(n), want.get(n)) for n in sorted(set(got) | set(want)) if got.get(n) != want.get(n)}
    key = config_key(got) if got else None
    return (
        seed,
        round(regret(key), 4),
        round(closest, 4),
        len(measured),
        round(search_s, 1),
        round(ex.measure_s, 1),
        diff,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True)
    ap.add_argument("--landscape", required=True)
    ap.add_argument("--strategy", default="default", choices=sq.STRATEGIES)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--truth-rounds", type=int, default=0)
    ap.add_argument("--exact-truth", action="store_true")
    ap.add_argument("--misses", action="store_true", help="print only the seeds more than 2%% off")
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    truth_rounds = -1 if args.exact_truth else args.truth_rounds
    os.environ["AUTOTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="autotune-seeds-")
    work = [(args.spec, args.landscape, args.strategy, truth_rounds, s) for s in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one_seed, work))
    print("seed regret closest_measured configs search_s total_s {knob: (pick, best)}")
    for r in rows:
        if not args.misses or r[1] > sq.TIE_PCT:
            print(*r)
    n = len(rows)
    within = sum(r[1] <= sq.TIE_PCT for r in rows) / n
    reached = sum(r[2] <= sq.TIE_PCT for r in rows) / n
    worst = max(r[1] for r in rows)
    print(
        f"within 2%: {within:.2f}; worst regret {worst}; "
        f"search measured one within 2%: {reached:.2f} ({n} seeds)"
    )


if __name__ == "__main__":
    main()
