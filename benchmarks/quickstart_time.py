"""Wall time of `autotune run search_spaces/quickstart.yaml` from scratch, this tree against another.

    python benchmarks/quickstart_time.py --against /tmp/old --rounds 2

`--against` is a checkout of another commit (e.g. `git worktree add /tmp/old REV`); it runs with
this environment's packages, its own source first on PYTHONPATH. Runs are interleaved (A B, B A,
...) in fresh folders with fresh studies; the artifact cache (ONNX exports, references) is warmed
once and shared, so that both sides time the search and the race, not the first export. Each run
records the 1-minute load average before it starts. Each tree runs its own
search_spaces/quickstart.yaml (its spec as shipped with its code). Writes
docs/benchmarks/quickstart_time.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "quickstart.yaml"


def one(source: Path | None, cache: Path) -> tuple[float, float, int, str, str]:
    """(seconds, load before, exit status, the run's own wall-time line, the config it chose) of
    one run from scratch."""
    env = dict(os.environ, AUTOTUNE_CACHE_DIR=str(cache))
    if source is not None:
        env["PYTHONPATH"] = str(source)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="autotune-qs-") as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run(
            # Each tree runs its own quickstart spec, as shipped with its code.
            [sys.executable, "-m", "autotuner.cli", "run", str((source or ROOT) / SPEC.relative_to(ROOT))],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        dt = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    wall = next((ln for ln in proc.stdout.splitlines() if ln.startswith("wall time ")), "-")
    chosen = next((ln for ln in proc.stdout.splitlines() if ln.startswith("chosen: ")), "")
    pick = chosen.removeprefix("chosen: ").partition(" by ")[0].partition(" ")[2] or "-"
    return dt, load, proc.returncode, wall.partition(": ")[2] or "-", pick


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, required=True, help="a checkout of the commit to compare")
    ap.add_argument("--label", default=None, help="what --against is (default: its git commit)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    label = (
        args.label
        or subprocess.run(
            ["git", "-C", str(args.against), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    load0 = load_average()
    cache = Path(tempfile.mkdtemp(prefix="autotune-qs-cache-"))
    one(None, cache)  # warm the shared artifact cache
    times: dict[str, list[float]] = {"this tree": [], label: []}
    rows = []
    for r in range(args.rounds):
        order = [("this tree", None), (label, args.against)]
        if r % 2:
            order.reverse()
        for name, source in order:
            dt, load, code, parts, pick = one(source, cache)
            times[name].append(dt)
            rows.append(f"| {r + 1} | {name} | {dt:.1f} | {load:.2f} | {code} | {parts} | {pick} |")
            print(rows[-1], flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["this tree"] / med[label]
    lines = [
        "# Quickstart wall time, side by side",
        "",
        f"`autotune run search_spaces/quickstart.yaml` from scratch (fresh folder and study), this tree "
        f"against `{label}`, interleaved over {args.rounds} rounds; the artifact cache is warmed once "
        "and shared. Produced by `python benchmarks/quickstart_time.py`.",
        "",
        "## Machine",
        "",
        *machine_lines(load0),
        "",
        "## Runs",
        "",
        "| round | code | seconds | load before (1 min) | exit | the run's own breakdown | chosen |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Median: this tree {med['this tree']:.1f} s, `{label}` {med[label]:.1f} s; ratio {ratio:.2f}. "
        "The pick and the number of race rounds vary from run to run (each run draws its own "
        "sampler seed), so single runs differ by more than the code does.",
        "",
    ]
    write_doc("quickstart_time.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
