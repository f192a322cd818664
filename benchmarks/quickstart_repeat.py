"""Run search_spaces/quickstart.yaml N times from scratch and compare the configs chosen.

    python benchmarks/quickstart_repeat.py [N]

Each run is a fresh folder (new study) sharing one artifact cache (ONNX export, reference), as a
user's reruns would. Prints and writes docs/benchmarks/quickstart_repeat.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_lines, write_doc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "quickstart.yaml"


def main(n: int) -> None:
    rows = []
    for i in range(n):
        with tempfile.TemporaryDirectory(prefix="autotune-repeat-") as d:
            started = time.monotonic()
            proc = subprocess.run(["autotune", "run", str(SPEC)], cwd=d, capture_output=True, text=True)
            wall = time.monotonic() - started
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                raise SystemExit(f"run {i + 1} failed")
            best = yaml.safe_load((Path(d) / "reports" / "quickstart.best.yaml").read_text())
        tp = best["metrics"]["throughput_items_s"]
        rem = tp.get("remeasured", {})
        row = {
            "run": i + 1,
            "wall_s": round(wall, 1),
            "params": best["params"],
            "trial_value": tp["trial"],
            "mean": rem.get("mean"),
            "ci": [rem.get("ci_low"), rem.get("ci_high")],
            "tied_with": best["choice"]["tied_with_trials"],
            "candidates": [(c["params"], c.get("mean"), c.get("ci")) for c in best["choice"]["candidates"]],
            "reason": best["choice"]["reason"],
        }
        rows.append(row)
        print(row, flush=True)
    lines = [
        "# quickstart, three runs from scratch",
        "",
        "Produced by `python benchmarks/quickstart_repeat.py`: `autotune run search_spaces/quickstart.yaml`",
        "in a fresh folder each time (new study; the artifact cache is shared, as on a user's machine).",
        "",
        "## Machine",
        "",
        *machine_lines(),
        "",
        "## Chosen configs",
        "",
        "| run | wall s | chosen params | throughput (trial) | re-measured mean [95% CI] "
        "| tied with | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = " ".join(f"{k}={v}" for k, v in r["params"].items())
        ci = f"{r['mean']} [{r['ci'][0]}, {r['ci'][1]}]" if r["mean"] is not None else "-"
        lines.append(
            f"| {r['run']} | {r['wall_s']} | {p} | {r['trial_value']} | {ci} | "
            f"{r['tied_with'] or '-'} | {r['reason']} |"
        )
    lines += ["", "## Candidates re-measured in each run", ""]
    for r in rows:
        lines.append(
            f"- run {r['run']}: "
            + "; ".join(
                f"{' '.join(f'{k}={v}' for k, v in c[0].items())} mean {c[1]} CI {c[2]}"
                for c in r["candidates"]
            )
        )
    write_doc("quickstart_repeat.md", lines)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
