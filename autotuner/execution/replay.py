"""Replaying a recorded landscape: a config is answered with one of its recorded measurements.

Used by benchmarks/search_quality.py to run the real driver and the real race against ground
truth: every config of a space was measured in several rounds in fresh processes
(benchmarks/record_landscape.py), and each request draws one of those rounds at random, so the
noise the search sees is the machine's real noise. Nothing is launched.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from autotuner.execution.base import Executor, TrialRequest
from autotuner.result import FAILURE_CLASSES, TrialResult
from autotuner.spec.schema import Spec, config_key


def load_landscape(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Records by config key: measurements and failures as record_landscape.py writes them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.setdefault(config_key(rec["config"]), []).append(rec)
    return out


class ReplayExecutor(Executor):
    slots = 1

    def __init__(
        self, spec: Spec, caps: dict[str, Any], landscape: dict[str, list[dict[str, Any]]], seed: int
    ):
        super().__init__(spec, caps)
        self.landscape = landscape
        self.rng = random.Random(seed)
        self.measure_s = 0.0  # timed measurement the replayed run would have spent
        self.setup_s = 0.0
        self.blocks = 0
        self.queues: dict[str, list[dict[str, Any]]] = {}

    def answer(self, request: TrialRequest) -> TrialResult:
        recs = self.landscape.get(config_key(request.config))
        if not recs:
            return TrialResult.failure("error", "config not in the recorded landscape")
        ok = [r for r in recs if "metrics" in r]
        if not ok:
            r = recs[0]
            cls = r.get("failure_class") if r.get("failure_class") in FAILURE_CLASSES else "error"
            return TrialResult.failure(cls, str(r.get("message")))
        # Without replacement: a config's recorded rounds are drawn in a shuffled order, and only
        # once all were drawn does the order start again (blocks are independent measurements).
        k = config_key(request.config)
        queue = self.queues.get(k)
        if not queue:
            queue = list(ok)
            self.rng.shuffle(queue)
            self.queues[k] = queue
        r = queue.pop()
        metrics = {k: float(v) for k, v in r["metrics"].items()}
        block_s = request.block_s
        if block_s is not None:
            metrics["measure_s"] = block_s
        self.measure_s += float(metrics.get("measure_s") or 0.0)
        self.setup_s += float(metrics.get("setup_s") or 0.0)
        self.blocks += 1
        return TrialResult(ok=True, metrics=metrics)

    def submit(self, request: TrialRequest) -> Future[TrialResult]:
        fut: Future[TrialResult] = Future()
        fut.set_result(self.answer(request))
        return fut
