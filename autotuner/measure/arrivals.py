"""When requests arrive, in seconds from the start of a run: Poisson at a rate, or from a trace."""

from __future__ import annotations

import numpy as np


def poisson(rate_rps: float, duration_s: float, limit: int, seed: int) -> np.ndarray:
    """Arrival times of a Poisson process at rate_rps (exponential gaps, seeded), the first at 0,
    up to duration_s and at most `limit` of them."""
    rng = np.random.default_rng([seed, 11])
    expected = int(rate_rps * duration_s * 1.2) + 16
    gaps = rng.exponential(1.0 / rate_rps, size=min(limit, expected))
    times = np.cumsum(gaps) - gaps[0]
    while times[-1] < duration_s and len(times) < limit:  # a slow draw: extend it
        more = np.cumsum(rng.exponential(1.0 / rate_rps, size=expected)) + times[-1]
        times = np.concatenate([times, more])[:limit]
    return times[times <= duration_s]


def from_trace(rows: list[dict], duration_s: float, limit: int) -> np.ndarray:
    """A trace's arrival times, sorted, up to duration_s and at most `limit` of them."""
    times = np.sort(np.array([float(r.get("arrival_s", 0.0)) for r in rows]))
    times = times - times[0]
    return times[times <= duration_s][:limit]
