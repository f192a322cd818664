"""Serving metrics of an llm run, from each request's token timestamps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autotuner.backends.llm.workload import WorkloadSpec


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile of some figures; NaN when there are none (a metric, not an error)."""
    return float(np.percentile(xs, q)) if xs else math.nan


def serving_metrics(outs: list[Any], reqs: list[Any], page_size: int, w: WorkloadSpec) -> dict[str, float]:
    """TTFT, TPOT, ITL, e2e, throughput, goodput, page waste and concurrency from token timestamps."""
    ttft, tpot, itl, e2e, spans = [], [], [], [], []
    allocated = used = generated = 0
    for out, req in zip(outs, reqs, strict=True):
        ts = list(out.timestamps or [])
        if not ts:
            continue
        first, last = (ts[0] - out.created_time) * 1e3, (ts[-1] - out.created_time) * 1e3
        ttft.append(first)
        e2e.append(last)
        if len(ts) > 1:
            tpot.append((last - first) / (len(ts) - 1))
            itl.extend(np.diff(ts) * 1e3)
        spans.append((ts[0], ts[-1]))
        n = len(req.prompt) + len(out.generated_tokens)
        allocated += math.ceil(n / page_size) * page_size
        used += n
        generated += len(out.generated_tokens)
    begin = min(o.created_time for o in outs)
    end = max((o.timestamps or [o.created_time])[-1] for o in outs)
    wall = max(end - begin, 1e-9)
    good = sum(
        1
        for i, t in enumerate(ttft)
        if (w.slo_ttft_ms is None or t <= w.slo_ttft_ms)
        and (w.slo_tpot_ms is None or i >= len(tpot) or tpot[i] <= w.slo_tpot_ms)
    )

    return {
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p95_ms": percentile(ttft, 95),
        "tpot_p50_ms": percentile(tpot, 50),
        "tpot_p95_ms": percentile(tpot, 95),
        "itl_p50_ms": percentile(itl, 50),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p95_ms": percentile(e2e, 95),
        "output_tokens_s": generated / wall,
        "requests_s": len(outs) / wall,
        "goodput_requests_s": good / wall,
        "page_waste_pct": 100.0 * (allocated - used) / allocated if allocated else math.nan,
        "concurrency_reached": float(_max_overlap(spans)),
    }


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best
