"""How late the dynamic batcher's threads are on this machine: the timed bounds that unit tests
cannot assert (a loaded machine breaks them by chance), measured and compared with what serving
needs. The rules themselves (when a batch is due) are tested on a fake clock in
tests/measure/test_serving.py.

    python benchmarks/batcher_timing.py

1. Timeout 20 ms, sparse arrivals (20/s): how long past its timeout the first request of a batch
   waited (bound: 15 ms, the scheduler's slack on a loaded 2-core machine).
2. Timeout 0, 50 arrivals/s: the wait of a batch's first request (bound: median 2 ms, max 15 ms).
3. Two instances, 20 requests at once, 20 ms per batch of one: the time to serve them all (bound:
   0.32 s, 80% of one instance's 0.4 s). Exit 1 when a bound is broken.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average  # noqa: E402

from autotuner.measure.arrivals import poisson  # noqa: E402
from autotuner.measure.batcher import Request  # noqa: E402
from autotuner.measure.serving import Lane, Server  # noqa: E402

SLACK_S = 0.015


class Sleeper:
    def __init__(self, per_batch_s: float) -> None:
        self.per_batch_s = per_batch_s

    def setup(self) -> None:
        pass

    def run(self, rows: int) -> None:
        time.sleep(self.per_batch_s)


def serve(
    per_batch_s: float, instances: int, max_batch: int, timeout_s: float, arrivals: np.ndarray
) -> tuple[list[Request], float]:
    s = Server(
        [Lane(Sleeper(per_batch_s), None, lambda inst: None) for _ in range(instances)],
        max_batch,
        timeout_s,
        1024,
    )
    s.start()
    try:
        started = time.perf_counter()
        accepted, _ = s.run_open(arrivals)
        return accepted, time.perf_counter() - started
    finally:
        s.stop()


def main() -> int:
    print(f"load average: {load_average()}")
    broken = []
    accepted, _ = serve(0.001, 1, 8, 0.020, poisson(20.0, 1.5, 10_000, seed=1))
    late = max(r.started_s - r.enqueued_s for r in accepted if r.row == 0) - 0.020
    print(
        f"1. timeout 20 ms: latest first request started {late * 1e3:+.2f} ms past it "
        f"(bound {SLACK_S * 1e3:g})"
    )
    broken += ["1"] if late > SLACK_S else []
    accepted, _ = serve(0.001, 1, 8, 0.0, poisson(50.0, 1.0, 10_000, seed=2))
    waits = np.array([r.started_s - r.enqueued_s for r in accepted if r.row == 0])
    print(
        f"2. timeout 0: wait median {np.median(waits) * 1e3:.3f} ms (bound 2), "
        f"max {waits.max() * 1e3:.2f} ms (bound 15)"
    )
    broken += ["2"] if np.median(waits) >= 0.002 or waits.max() > SLACK_S else []
    _, took = serve(0.02, 2, 1, 0.0, np.zeros(20))
    print(f"3. two instances, 20 batches of 20 ms: {took:.3f} s (bound 0.32, one instance 0.4)")
    broken += ["3"] if took >= 0.32 else []
    print("bounds broken: " + (", ".join(broken) if broken else "none"))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
