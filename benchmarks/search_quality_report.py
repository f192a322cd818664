"""Run search_quality.py on every recorded landscape and write docs/benchmarks/search_quality.md.

    python benchmarks/search_quality_report.py [--seeds 50]
    python benchmarks/search_quality_report.py --compare quickstart,synthetic --truth-rounds 2

The landscapes live in benchmarks/landscapes/ (recorded by record_landscape.py on this machine);
each is replayed with the spec it was recorded from. --compare runs each named landscape twice in
one invocation, self-graded (truth = every round, the replay's own) and with its last
--truth-rounds rounds held out as the truth, and writes that section of search_quality.md only
(the other sections are kept as they are).
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
    # Recorded 2026-12-03 on one machine, 5-6 trial-length rounds and 3-4 rounds of short blocks
    # (record_landscape.py --short-s), which the specs' first looks are replayed from; they chose
    # first_look_s, so they are not held out. quickstart.jsonl and tiny.jsonl (3-4 rounds, no
    # short blocks, 2026-12-01) are kept as recorded.
    "quickstart6": "search_spaces/quickstart.yaml",
    "tiny5": "search_spaces/tiny.yaml",
    "llm": "search_spaces/llm.yaml",
    # Held out: recorded after the defaults were settled, and never used to choose them.
    "wide": "benchmarks/landscapes/wide.yaml",
}
# Held out, 324 configs of ONNX Runtime session options x static int8 (issue 22); graded with
# --compare only (it is recorded with enough rounds to keep truth rounds apart).
HELD_OUT = {
    "sessions": "benchmarks/landscapes/sessions.yaml",
    # The same space recorded again on 2026-12-03, nothing else running: 5 trial-length rounds and
    # 3 rounds of short blocks (sessions.jsonl's last round was taken under other sessions' load).
    "sessions5": "benchmarks/landscapes/sessions.yaml",
}
# Generated in memory from its fitted construction (benchmarks/synthetic_landscape.py).
SYNTHETIC = {"synthetic": ("benchmarks/landscapes/synthetic.yaml", "benchmarks/landscapes/synthetic.json")}
COMPARE_HEAD = "## Self-graded vs held-out truth"
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
    ap.add_argument("--compare", default="", help="landscapes to grade both ways, side by side")
    ap.add_argument("--truth-rounds", type=int, default=2)
    ap.add_argument(
        "--heading", default=COMPARE_HEAD, help="the section of search_quality.md --compare writes (replaced)"
    )
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args()
    if args.compare:
        compare(args)
        return
    load0 = load_average()
    lines = [
        "# Search quality on recorded landscapes",
        "",
        "Produced by `python benchmarks/search_quality_report.py` "
        f"(`benchmarks/search_quality.py --seeds {args.seeds}` on each landscape). A landscape holds "
        "every config of a spec's space measured in several interleaved rounds, each in a fresh "
        "worker process, on this machine (`benchmarks/record_landscape.py`); a config's true value "
        "is its mean over those rounds (the sections per landscape below are **self-graded**: the "
        "replay draws its answers from the same rounds; the last section grades with held-out "
        "rounds). Each run replays the real driver and the real race against "
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
    write_doc("search_quality.md", lines + _kept_compare())


def _kept_compare() -> list[str]:
    """The --compare sections of the doc as they stand (COMPARE_HEAD and every "## Held-out"
    heading: a full rerun keeps them; --compare redoes its own)."""
    path = ROOT / "docs" / "benchmarks" / "search_quality.md"
    doc = path.read_text().splitlines() if path.exists() else []
    kept: list[str] = []
    for i, line in enumerate(doc):
        if line == COMPARE_HEAD or line.startswith("## Held-out"):
            j = next((k for k in range(i + 1, len(doc)) if doc[k].startswith("## ")), len(doc))
            kept += [*doc[i:j], ""] if kept else doc[i:j]
    return kept


def _machines(land: str, truth_rounds: int) -> str:
    """Which CPU the replayed and the held-out blocks were measured on (each line's cpu_model)."""
    from collections import Counter

    from search_quality import split

    def cpus(part: dict) -> str:
        n = Counter(r.get("cpu_model", "?") for recs in part.values() for r in recs if "metrics" in r)
        return ", ".join(f"{c}: {k} blocks" for c, k in sorted(n.items()))

    replayed, truth = split(land, truth_rounds)
    return f"Replayed blocks by CPU: {cpus(replayed)}. Held-out truth blocks by CPU: {cpus(truth)}."


def _where(name: str) -> tuple[str, str]:
    if name in SYNTHETIC:
        return SYNTHETIC[name]
    specs = {**LANDSCAPES, **HELD_OUT}
    if name not in specs:
        print(f"--compare: {name!r} is not one of {', '.join([*specs, *SYNTHETIC])}", file=sys.stderr)
        raise SystemExit(2)
    return specs[name], f"benchmarks/landscapes/{name}.jsonl"


def compare(args: argparse.Namespace) -> None:
    """Each landscape graded self and held-out in one invocation; that section of the doc only."""
    cols = ("graded", *COLS, "served_truth_blocks", "median_wall_s")
    strategies = [s for s in args.strategies.split(",") if s]
    load0 = load_average()
    heading = f" --heading {args.heading!r}" if args.heading != COMPARE_HEAD else ""
    if args.strategies != ",".join(STRATEGIES):
        heading += f" --strategies {args.strategies}"
    out = [
        args.heading,
        "",
        f"`python benchmarks/search_quality_report.py --compare {args.compare} --truth-rounds "
        f"{args.truth_rounds} --seeds {args.seeds}{heading}`: each landscape run twice in one invocation. "
        "Self-graded: the truth is the mean of every recorded round, the same rounds the replay "
        f"draws (the old way). Held-out: each config's last {args.truth_rounds} trial-length rounds "
        "are the truth and the replay never draws them (`served_truth_blocks` counts any it did: 0); "
        "the tie clause's Welch interval uses those rounds. The grid pass is priced on the replayed "
        f"rounds. Load average {load0} at the start, {load_average()} at the end.",
        "",
    ]
    for name in [n for n in args.compare.split(",") if n]:
        spec, land = _where(name)
        for t in (0, args.truth_rounds):
            started = time.monotonic()
            meta, *rows = evaluate(str(ROOT / spec), str(ROOT / land), args.seeds, strategies, args.jobs, t)
            wall = time.monotonic() - started
            head = (
                f"**{name}, {meta['graded']}**: `{land}`, {meta['configs']} configs ({meta['feasible']} "
                f"feasible); true best {meta['metric']}={meta['best_mean']:.4g} at `{meta['best']}`; "
                f"{args.seeds} seeds; {wall:.0f} s; load average {load_average()}; the best mean over "
                f"every replayed round of every config loses {meta['every_round_regret']} to it"
            )
            print(head, flush=True)
            out += [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
            out += [""]
        if not land.endswith(".json"):
            out += [_machines(str(ROOT / land), args.truth_rounds), ""]
    doc = (ROOT / "docs" / "benchmarks" / "search_quality.md").read_text().splitlines()
    if args.heading in doc:
        i = doc.index(args.heading)
        j = next((k for k in range(i + 1, len(doc)) if doc[k].startswith("## ")), len(doc))
        doc = doc[:i] + out + doc[j:]
    else:
        doc = [*doc, "", *out]
    write_doc("search_quality.md", doc)


if __name__ == "__main__":
    main()
