"""How much a recorded landscape's blocks of one config vary, overall and by parameter value.

    python benchmarks/landscape_noise.py benchmarks/landscapes/sessions5.jsonl [--metric M]

Per config, the standard deviation of log(metric) over its trial-length blocks (first looks and
blocks under foreign load left out; configs with fewer than 3 such blocks skipped) and the median
within-block latency_cv; then, per value of every parameter, the median of those over the configs
holding it. A between-block spread well above the within-block cv means whole blocks run fast or
slow (the machine's state changes between processes), which no longer block removes: only more
blocks, interleaved, average it out. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def spreads(path: Path, metric: str) -> list[tuple[dict[str, Any], float, float, int]]:
    """(config, between-block sd of log metric, median within-block cv, blocks) per config."""
    from autotuner.execution.replay import is_short, load_landscape

    out = []
    for recs in load_landscape(path).values():
        ms = [
            r["metrics"]
            for r in recs
            if r.get("metrics", {}).get(metric) and not is_short(r) and not r.get("under_load")
        ]
        if len(ms) < 3:
            continue
        sd = statistics.stdev(math.log(float(m[metric])) for m in ms)
        cv = statistics.median(float(m.get("latency_cv", math.nan)) for m in ms)
        out.append((recs[0]["config"], sd, cv, len(ms)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("landscape", type=Path)
    ap.add_argument("--metric", default="throughput_items_s")
    args = ap.parse_args()
    rows = spreads(args.landscape, args.metric)
    if not rows:
        print(f"{args.landscape}: no config with 3 or more clean trial-length blocks", file=sys.stderr)
        raise SystemExit(2)
    sds = [r[1] for r in rows]
    print(
        f"{args.landscape.name}: {len(rows)} configs, median {statistics.median(r[3] for r in rows):g} "
        f"clean blocks each; between-block sd of log {args.metric}: median {statistics.median(sds):.3f}, "
        f"90th percentile {sorted(sds)[int(0.9 * (len(sds) - 1))]:.3f}\n"
    )
    print("| parameter | value | configs | median between-block sd (log) | median within-block cv |")
    print("|---|---|---|---|---|")
    names = sorted({n for r in rows for n in r[0]})
    for n in names:
        by: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for cfg, sd, cv, _ in rows:
            if n in cfg:
                by[str(cfg[n])].append((sd, cv))
        if len(by) < 2:
            continue
        for v, xs in sorted(by.items()):
            sd_m = statistics.median(x[0] for x in xs)
            cv_m = statistics.median(x[1] for x in xs)
            print(f"| {n} | {v} | {len(xs)} | {sd_m:.3f} | {cv_m:.3f} |")


if __name__ == "__main__":
    main()
