"""One change to the search, graded before and after on every landscape, side by side in one run.

    git worktree add /tmp/before COMMIT
    python benchmarks/search_compare.py --before /tmp/before --title "..." --out X.md

Each case (a landscape, its spec, how it is graded, the strategies) is replayed by
`benchmarks/search_quality.py --json` twice, once in the tree given by --before (the code before
the change) and once in this tree, the two runs of a case one after the other. The replay's
figures do not depend on the machine's load (the answers are recorded blocks), but the load is
recorded with them. Prints a markdown table and writes it, with the machine, to
docs/benchmarks/OUT.

Cases are graded as docs/benchmarks/search_quality.md grades them: the landscapes that chose the
defaults (quickstart6, tiny5) and the semi-synthetic construction (against its noiseless truth),
then the held-out ones (wide, sessions5), which must never be used to choose: run them once the
change is settled, and report what they say.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402
from search_quality_report import HELD_OUT, LANDSCAPES, SYNTHETIC  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (name, grading flags, strategies, held out); each landscape's spec is the one
# search_quality_report.py replays it with.
CASES = [
    ("quickstart6", ["--truth-rounds", "2"], "default", False),
    ("tiny5", ["--truth-rounds", "2"], "default", False),
    ("llm", [], "default", False),
    ("synthetic", ["--exact-truth"], "default,first-look,first-look-x4", False),
    ("wide", ["--truth-rounds", "1"], "default", True),
    ("sessions5", ["--truth-rounds", "2"], "default", True),
]


def spec_and_landscape(name: str) -> tuple[str, str]:
    if name in SYNTHETIC:
        return SYNTHETIC[name]
    return {**LANDSCAPES, **HELD_OUT}[name], f"benchmarks/landscapes/{name}.jsonl"


COLS = ("p_best", "p_within_2pct", "median_regret", "worst_regret", "measure_s_ratio")


def replay(tree: Path, case: tuple, seeds: int, jobs: int) -> list[dict]:
    name, flags, strategies, _ = case
    spec, land = spec_and_landscape(name)
    cmd = [
        sys.executable,
        "benchmarks/search_quality.py",
        "--spec",
        spec,
        "--landscape",
        str(ROOT / land),
        "--seeds",
        str(seeds),
        "--strategies",
        strategies,
        "--jobs",
        str(jobs),
        "--json",
        *flags,
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(cmd[1:])} failed:\n{out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a checkout of the code before the change")
    ap.add_argument("--title", required=True)
    ap.add_argument("--out", required=True, help="a file name under docs/benchmarks/")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    args = ap.parse_args()
    before = Path(args.before).resolve()
    only = {x for x in args.only.split(",") if x}
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S %z"), load_average()
    head = ["| landscape | graded | strategy | " + " | ".join(f"{c} before / after" for c in COLS) + " |"]
    head.append("|" + "---|" * (3 + len(COLS)))
    rows = []
    for case in CASES:
        if only and case[0] not in only:
            continue
        t0, load0 = time.monotonic(), load_average()
        old = replay(before, case, args.seeds, args.jobs)
        new = replay(ROOT, case, args.seeds, args.jobs)
        for a, b in zip(old, new, strict=True):
            cells = " | ".join(f"{a[c]} / {b[c]}" for c in COLS)
            held = " (held out)" if case[3] else ""
            rows.append(f"| {case[0]}{held} | {b['graded']} | {b['strategy']} | {cells} |")
            print(rows[-1], flush=True)
        print(f"  {case[0]}: {time.monotonic() - t0:.0f} s, load {load0} -> {load_average()}", flush=True)
    cmd = shlex.join(["python", "benchmarks/search_compare.py", *sys.argv[1:]])
    lines = [
        f"# {args.title}",
        "",
        f"Produced by `{cmd}` ({args.seeds} seeds per strategy; before: `{before}` at "
        f"{_commit(before)}, after: {_commit(ROOT)}). Started {started}.",
        "",
        *head,
        *rows,
        "",
        "## Machine",
        "",
        *machine_lines(load_start),
    ]
    write_doc(args.out, lines)


def _commit(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    main()
