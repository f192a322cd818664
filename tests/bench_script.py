"""A small external benchmark the command-runner tests drive: real matrix products, real timings.

    python bench_script.py --size N --reps R [--label TEXT] [--out FILE] [--fail]

Prints (or writes to --out) JSON with throughput and latency percentiles, and echoes the argv it
received so that a test can see the exact bytes a parameter value arrived as.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--label", default="")
    ap.add_argument("--out")
    ap.add_argument("--fail", action="store_true")
    args = ap.parse_args()
    if args.fail:
        print("warming up", file=sys.stderr)
        print("error: the device is not ready (simulated)", file=sys.stderr)
        return 3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.size, args.size)).astype(np.float32)
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        a @ a
        times.append((time.perf_counter() - t) * 1e3)
    print("some log line the runner must skip")
    result = {
        "results": {
            "throughput": args.reps / (sum(times) / 1e3),
            "latency": {"p50": float(np.median(times))},
        },
        "argv": sys.argv[1:],
        "label": args.label,
    }
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
