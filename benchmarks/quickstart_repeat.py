"""Run search_spaces/quickstart.yaml N times from scratch and judge each pick against ground truth.

    python benchmarks/quickstart_repeat.py [N] [--landscape FILE.jsonl]

Each run is a fresh folder (new study, a fresh sampler seed, as a new user's run) sharing one
artifact cache (ONNX export, reference). The ground truth is a quickstart landscape recorded on
this machine (default benchmarks/landscapes/quickstart6.jsonl: every config measured in six
rounds in fresh processes; its trial-length rounds only): a pick is right when its true mean is
within 2% of the true best's or the landscape's rounds cannot tell them apart. Each run's own
wall-time line (start-up, setup, warm-up, timed, driver) and the load before it are kept. Prints
and writes docs/benchmarks/quickstart_picks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402
from search_quality import TIE_PCT, truth, welch_tie  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "quickstart.yaml"
LANDSCAPE = ROOT / "benchmarks" / "landscapes" / "quickstart6.jsonl"


def main(n: int, landscape: Path) -> None:
    from record_landscape import landscape_spec

    from autotuner.api import load_spec
    from autotuner.execution.replay import load_landscape
    from autotuner.search.estimates import config_key

    spec = landscape_spec(load_spec(SPEC))
    t = truth(spec, load_landscape(landscape))
    feas = {k: v for k, v in t.items() if v["feasible"]}
    ranked = sorted(feas, key=lambda k: -feas[k]["mean"])
    best = feas[ranked[0]]
    load0 = load_average()
    rows = []
    for i in range(n):
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="autotune-repeat-") as d:
            started = time.monotonic()
            proc = subprocess.run(["autotune", "run", str(SPEC)], cwd=d, capture_output=True, text=True)
            wall = time.monotonic() - started
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                raise SystemExit(f"run {i + 1} failed")
            chosen = yaml.safe_load((Path(d) / "reports" / "quickstart.best.yaml").read_text())
            tail = proc.stdout[proc.stdout.rfind("the race on") :] if "the race on" in proc.stdout else ""
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("wall time ")), "-")
        k = config_key(chosen["params"])
        got = t.get(k)
        regret = (best["mean"] - got["mean"]) / best["mean"] if got else 1.0
        right = got is not None and (regret <= TIE_PCT or welch_tie(got["values"], best["values"]))
        tp = chosen["metrics"]["throughput_items_s"]
        row = {
            "run": i + 1,
            "wall_s": round(wall, 1),
            "load": round(load, 2),
            "breakdown": line.partition(": ")[2] or "-",
            "params": chosen["params"],
            "estimate": f"{tp['mean']} [{tp.get('ci_low')}, {tp.get('ci_high')}] over {tp['blocks']} blocks",
            "true_rank": ranked.index(k) + 1 if k in ranked else None,
            "true_mean": round(got["mean"], 1) if got else None,
            "regret_pct": round(100 * regret, 1),
            "right": right,
            "baseline": (chosen["choice"].get("baseline") or {}).get("text", "-"),
            "reason": chosen["choice"]["reason"],
        }
        rows.append(row)
        print(row, flush=True)
        print(tail[:3000], flush=True)
    lines = [
        "# quickstart, three runs from scratch, against ground truth",
        "",
        "Produced by `python benchmarks/quickstart_repeat.py`: `autotune run search_spaces/quickstart.yaml`",
        "in a fresh folder each time (new study, a fresh sampler seed; the artifact cache is shared, as on",
        f"a user's machine). Ground truth: `{landscape.relative_to(ROOT)}` (every config measured",
        "in fresh processes over several rounds, on this machine). True best: "
        f"`{' '.join(f'{k}={v}' for k, v in best['config'].items())}` at {best['mean']:.1f} items/s.",
        "",
        "## Machine",
        "",
        *machine_lines(load0),
        "",
        "## Picks",
        "",
        "| run | wall s | load before | the run's own breakdown | chosen params | its estimate | true rank | "
        "true mean | regret % | best or tie | baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = " ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(
            f"| {r['run']} | {r['wall_s']} | {r['load']} | {r['breakdown']} | {p} | {r['estimate']} | "
            f"{r['true_rank']} | {r['true_mean']} | "
            f"{r['regret_pct']} | {'yes' if r['right'] else 'no'} | {r['baseline']} |"
        )
    lines += ["", "Reasons:", ""] + [f"- run {r['run']}: {r['reason']}" for r in rows]
    lines += ["", "True ranking (feasible configs, top 8):", ""]
    for j, k in enumerate(ranked[:8]):
        v = feas[k]
        vals = ", ".join(f"{x:.0f}" for x in v["values"])
        lines.append(
            f"{j + 1}. `{' '.join(f'{a}={b}' for a, b in v['config'].items())}`: {v['mean']:.1f} ({vals})"
        )
    write_doc("quickstart_picks.md", lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=3)
    ap.add_argument("--landscape", type=Path, default=LANDSCAPE)
    args = ap.parse_args()
    main(args.n, args.landscape.resolve())
