"""Run search_quality.py on every recorded landscape and write docs/benchmarks/search_quality.md.

    python benchmarks/search_quality_report.py [--seeds 50]

The landscapes live in benchmarks/landscapes/ (recorded by record_landscape.py on this machine);
each is replayed with the spec it was recorded from.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402
from search_quality import STRATEGIES, evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LANDSCAPES = {
    "quickstart": "search_spaces/quickstart.yaml",
    "tiny": "search_spaces/tiny.yaml",
    "llm": "search_spaces/llm.yaml",
    # Held out: recorded after the defaults were settled, and never used to choose them.
    "wide": "benchmarks/landscapes/wide.yaml",
}
COLS = (
    "strategy",
    "p_best",
    "p_within_2pct",
    "median_regret",
    "worst_regret",
    "measure_s_ratio",
    "search_measure_s_ratio",
    "median_blocks",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--only", default=",".join(LANDSCAPES))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    load0 = load_average()
    lines = [
        "# Search quality on recorded landscapes",
        "",
        "Produced by `python benchmarks/search_quality_report.py` "
        f"(`benchmarks/search_quality.py --seeds {args.seeds}` on each landscape). A landscape holds "
        "every config of a spec's space measured in several interleaved rounds, each in a fresh "
        "worker process, on this machine (`benchmarks/record_landscape.py`); a config's true value "
        "is its mean over those rounds. Each run replays the real driver and the real race against "
        "it: a config is answered with one of its recorded rounds drawn at random, so the noise is "
        "the machine's own.",
        "",
        "- p_best: share of runs whose pick is within 2% of the true best's mean, or statistically "
        "tied with it on the landscape's own rounds (Welch 95% interval of the difference includes 0);",
        "- p_within_2pct: the same without the tie clause;",
        "- regret: (best - pick) / best on the true means;",
        "- measure_s_ratio: timed measurement seconds of a run (search and race) over those of "
        "measuring every config once; search_measure_s_ratio: the search alone.",
        "- strategies: default (the spec as written), tpe, random, grid, gp (Optuna's GPSampler), "
        "naive-tpe (tpe, no race: the best pooled estimate).",
        "",
        "## Machine",
        "",
    ]
    sections = []
    for name in [n for n in args.only.split(",") if n]:
        spec = LANDSCAPES[name]
        land = ROOT / "benchmarks" / "landscapes" / f"{name}.jsonl"
        started = time.monotonic()
        meta, *rows = evaluate(str(ROOT / spec), str(land), args.seeds, list(STRATEGIES), args.jobs)
        wall = time.monotonic() - started
        head = (
            f"{meta['configs']} configs ({meta['feasible']} feasible); true best {meta['metric']}="
            f"{meta['best_mean']:.4g} at `{meta['best']}`; {args.seeds} seeds; {wall:.0f} s"
        )
        print(name, head, flush=True)
        for r in rows:
            print("  ", r, flush=True)
        sections += [f"## {name}", "", f"`{spec}` on `benchmarks/landscapes/{name}.jsonl`: {head}", ""]
        sections += ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
        sections += ["| " + " | ".join(str(r[c]) for c in COLS) + " |" for r in rows]
        d = next(r for r in rows if r["strategy"] == "default")
        naive = next((r for r in rows if r["strategy"] == "naive-tpe"), None)
        aims = [
            ("P(best or tie) >= 0.95", d["p_best"] >= 0.95, d["p_best"]),
            ("median regret <= 1%", d["median_regret"] <= 0.01, d["median_regret"]),
            ("measurement <= 50% of the grid's", d["measure_s_ratio"] <= 0.5, d["measure_s_ratio"]),
        ]
        sections += ["", "Aims for the default strategy: " + "; ".join(
            f"{a}: {'met' if ok else 'NOT met'} ({v})" for a, ok, v in aims
        ) + "."]  # fmt: skip
        if naive is not None:
            sections += [
                f"Without the race (naive-tpe) the same search spends {naive['measure_s_ratio']} of the "
                f"grid's seconds and lands within 2% of the best in {naive['p_within_2pct']:.0%} of runs "
                f"(the race: {d['p_within_2pct']:.0%})."
            ]
        sections += [""]
    lines += machine_lines(load0) + [""] + sections
    write_doc("search_quality.md", lines)


if __name__ == "__main__":
    main()
