"""Per-block start-up with warm workers (forks of a zygote) against a fresh interpreter per block.

    python benchmarks/warm_workers.py [--blocks 4] [--spec search_spaces/quickstart.yaml] [--executor ray]

Two real executors on the same spec (local, or Ray: a local Ray cluster that both share), one
`measurement.workers: warm`, one `fresh`; blocks of the same configs interleaved (warm, fresh,
fresh, warm, ...) so that load hits both alike. Each block is a race block (`block_s`, no accuracy
check) of a real model. Prints and writes docs/benchmarks/warm_workers.md (Ray:
warm_workers_ray.md): median worker_startup_s, setup_s, measure_s, block wall time, and each
block's start-up in order.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402

from autotuner import api  # noqa: E402
from autotuner.execution import TrialRequest, make_executor  # noqa: E402
from autotuner.execution.capabilities import probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    {"backend": "onnxruntime-cpu", "precision": "fp32", "batch_size": 4, "threads": 2},
    {"backend": "torch-eager", "precision": "fp32", "batch_size": 4, "threads": 2},
]
FIELDS = ("worker_startup_s", "setup_s", "measure_s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=4, help="blocks per side")
    ap.add_argument("--spec", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    args = ap.parse_args()
    load0 = load_average()
    caps = probe()
    base = api.check_model(api.load_spec(args.spec))
    spec = {
        w: base.model_copy(update={"measurement": base.measurement.model_copy(update={"workers": w})})
        for w in ("warm", "fresh")
    }
    seen: dict[str, list[dict[str, float]]] = {"warm": [], "fresh": []}
    made = time.perf_counter()
    # Ray: the first executor starts the local cluster, the second joins it (and so closes first).
    ex = {w: make_executor(args.executor, spec[w], caps) for w in ("warm", "fresh")}
    try:
        for i in range(args.blocks):
            order = ("warm", "fresh") if i % 2 == 0 else ("fresh", "warm")
            for w in order:
                config = CONFIGS[i % len(CONFIGS)]
                t0 = time.perf_counter()
                res = ex[w].submit(TrialRequest(i, config, {"block_s": 0.4})).result()
                wall = time.perf_counter() - t0
                assert res.ok, res.failure_message
                seen[w].append({**{f: res.metrics[f] for f in FIELDS}, "block_wall_s": wall})
                up = res.metrics["worker_startup_s"]
                print(f"{w:5} {config['backend']:16} start-up {up:.2f} s, wall {wall:.2f} s")
    finally:
        for e in reversed(ex.values()):
            e.close()
    total = time.perf_counter() - made
    rows = ["| | warm | fresh |", "|---|---|---|"]
    for f in (*FIELDS, "block_wall_s"):
        med = {w: statistics.median(r[f] for r in seen[w]) for w in seen}
        rows.append(f"| median {f} | {med['warm']:.2f} | {med['fresh']:.2f} |")
    rows.append(f"| blocks | {len(seen['warm'])} | {len(seen['fresh'])} |")
    rows += ["", "Each block's worker_startup_s, in order (s):", ""]
    rows += [f"- {w}: " + ", ".join(f"{r['worker_startup_s']:.2f}" for r in seen[w]) for w in seen]
    on_ray = args.executor == "ray"
    lines = [
        "# Warm workers against a fresh interpreter per block" + (", on Ray" if on_ray else ""),
        "",
        f"`python benchmarks/warm_workers.py --blocks {args.blocks}{' --executor ray' if on_ray else ''}` "
        f"on `{Path(args.spec).name}`: two real "
        + (
            "Ray executors on one local Ray cluster (each block a Ray task; warm: forked from the zygote "
            "its Ray worker process keeps)"
            if on_ray
            else "local executors"
        )
        + ", blocks interleaved (warm, fresh, fresh, warm, ...), each a 0.4 s race block "
        f"of {', '.join(c['backend'] for c in CONFIGS)} in turn. Both executors' whole run: {total:.1f} s "
        "(the warm side's zygote start is inside it).",
        "",
        *rows,
        "",
        "`worker_startup_s`: the driver asked for the block -> the worker's main started (fresh: a new "
        "interpreter importing torch; warm: a fork of the zygote, which imported torch once). "
        "`setup_s`: the model's load, export and first call (onnxruntime is imported here in both: "
        "its import starts a thread, so the zygote does not import it).",
        "",
        "## Machine",
        "",
        *machine_lines(load0),
    ]
    print("\n".join(rows))
    write_doc("warm_workers_ray.md" if on_ray else "warm_workers.md", lines)


if __name__ == "__main__":
    main()
