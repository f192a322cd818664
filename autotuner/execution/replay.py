"""Replaying a recorded landscape: a config is answered with one of its recorded measurements.

Used by benchmarks/search_quality.py to run the real driver and the real race against ground
truth: every config of a space was measured in several rounds in fresh processes
(benchmarks/record_landscape.py), and each request draws one of those rounds at random, so the
noise the search sees is the machine's real noise. Nothing is launched.

Two rules keep the replay honest:
- held-out truth: `split_rounds` takes the last rounds of each config away from the replay, so
  the grader's true value rests on measurements the search never saw;
- fidelity: a short request (`TrialRequest.fidelity == "short"`, or a block_s under half the
  spec's min_time_s) is answered with short recorded blocks only ("fidelity": "short" lines),
  never with a trial-length one; a config with none recorded fails with that reason.
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

Landscape = dict[str, list[dict[str, Any]]]


def load_landscape(path: str | Path) -> Landscape:
    """Records by config key: measurements and failures as record_landscape.py writes them."""
    out: Landscape = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.setdefault(config_key(rec["config"]), []).append(rec)
    return out


def is_short(rec: dict[str, Any]) -> bool:
    return rec.get("fidelity") == "short"


def trial_rounds(recs: list[dict[str, Any]]) -> list[int]:
    """The distinct trial-length rounds a config has measurements in, in order."""
    return sorted({int(r["round"]) for r in recs if "metrics" in r and not is_short(r)})


def split_rounds(landscape: Landscape, truth_rounds: int) -> tuple[Landscape, Landscape]:
    """(replayed, truth): per config, its last `truth_rounds` trial-length rounds (every line of
    them, blocks under load included) go to the truth and never to the replay. Failures and
    short blocks stay with the replay; failures are copied to the truth too."""
    replay: Landscape = {}
    truth: Landscape = {}
    for key, recs in landscape.items():
        held = set(trial_rounds(recs)[-truth_rounds:]) if truth_rounds > 0 else set()
        for r in recs:
            measured = "metrics" in r and not is_short(r)
            if measured and int(r["round"]) in held:
                truth.setdefault(key, []).append(r)
                continue
            replay.setdefault(key, []).append(r)
            if "metrics" not in r:
                truth.setdefault(key, []).append(r)
    return replay, truth


class ReplayExecutor(Executor):
    slots = 1

    def __init__(self, spec: Spec, caps: dict[str, Any], landscape: Landscape, seed: int):
        super().__init__(spec, caps)
        self.landscape = landscape
        self.rng = random.Random(seed)
        self.measure_s = 0.0  # timed measurement the replayed run would have spent
        self.setup_s = 0.0
        self.blocks = 0
        self.queues: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        # (config key, round, fidelity) of every block served: what the search saw.
        self.served: list[tuple[str, int, str]] = []

    def short(self, request: TrialRequest) -> bool:
        """A short first look: asked for as such, or a block under half the trial's time."""
        if request.fidelity == "short":
            return True
        block_s = request.block_s
        return block_s is not None and block_s < 0.5 * self.spec.measurement.min_time_s

    def answer(self, request: TrialRequest) -> TrialResult:
        k = config_key(request.config)
        recs = self.landscape.get(k)
        if not recs:
            return TrialResult.failure("error", "config not in the recorded landscape")
        short = self.short(request)
        ok = [r for r in recs if "metrics" in r and is_short(r) == short]
        if not ok:
            failed = [r for r in recs if "metrics" not in r]
            if not failed:
                return TrialResult.failure("error", "no short block recorded for this config")
            r = failed[0]
            cls = r.get("failure_class") if r.get("failure_class") in FAILURE_CLASSES else "error"
            return TrialResult.failure(cls, str(r.get("message")))
        # Without replacement: a config's recorded rounds are drawn in a shuffled order, and only
        # once all were drawn does the order start again (blocks are independent measurements).
        queue = self.queues.get((k, short))
        if not queue:
            queue = list(ok)
            self.rng.shuffle(queue)
            self.queues[(k, short)] = queue
        r = queue.pop()
        self.served.append((k, int(r["round"]), "short" if short else "trial"))
        metrics = {m: float(v) for m, v in r["metrics"].items()}
        info: dict[str, Any] = {}
        if request.fidelity == "short":
            # A first look is a search trial: its accuracy (which a short recorded block, taken
            # race-style, does not carry) is the config's own, from a trial-length record.
            full = next((x for x in recs if "metrics" in x and not is_short(x)), None)
            for m, v in (full or {}).get("metrics", {}).items():
                metrics.setdefault(m, float(v))
            info = {"fidelity": "short"}
        if request.block_s is not None and not short:
            metrics["measure_s"] = request.block_s
        self.measure_s += float(metrics.get("measure_s") or 0.0)
        self.setup_s += float(metrics.get("setup_s") or 0.0)
        self.blocks += 1
        return TrialResult(ok=True, metrics=metrics, info=info)

    def submit(self, request: TrialRequest) -> Future[TrialResult]:
        fut: Future[TrialResult] = Future()
        fut.set_result(self.answer(request))
        return fut
