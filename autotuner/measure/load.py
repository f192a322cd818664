"""Foreign load: CPU time that other processes took on our cores while a block was measured.

On a shared machine a timing taken while other work runs can be off by half. Each measurement
block records how many cores' worth of other work ran beside it (busy time of the cores the
worker is pinned to, from /proc/stat, minus the worker's own CPU time), so that a block taken
under load can be told apart, repeated, and left out of a config's estimate.
"""

from __future__ import annotations

import math
import os
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_s(cores: list[int]) -> float | None:
    """Seconds the given cores spent busy (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = {f"cpu{c}" for c in cores}
    total = 0
    for ln in lines:
        parts = ln.split()
        if parts and parts[0] in want and len(parts) >= 9:
            v = [int(x) for x in parts[1:9]]
            total += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return total / _TICK


def _own_cpu_s() -> float:
    """CPU seconds of this process and every process of its session (the worker runs in a
    session of its own, so this is the trial: threads, children, an external engine's workers)."""
    t = os.times()
    mine = t.user + t.system + t.children_user + t.children_system
    try:
        sid = os.getsid(0)
        me = os.getpid()
        others = 0
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            # fields[3] is the session id; [11..14] utime, stime, cutime, cstime (ticks).
            if int(fields[3]) == sid:
                others += sum(int(x) for x in fields[11:15])
        return mine + others / _TICK
    except (OSError, ValueError, IndexError):
        return mine


class LoadMeter:
    """start() before a block, stop() after it: cores' worth of foreign work during the block."""

    def __init__(self) -> None:
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._t0 = self._busy0 = self._own0 = 0.0
        self._ok = False

    def start(self) -> None:
        busy = _busy_s(self.cores)
        self._ok = busy is not None
        self._t0, self._busy0, self._own0 = time.monotonic(), busy or 0.0, _own_cpu_s()

    def stop(self) -> float:
        """Foreign cores over the block (0 = nothing else ran; NaN where /proc/stat is missing)."""
        wall = time.monotonic() - self._t0
        busy = _busy_s(self.cores)
        if not self._ok or busy is None or wall <= 0:
            return float("nan")
        foreign = (busy - self._busy0) - (_own_cpu_s() - self._own0)
        # Tick granularity (10 ms) can make a quiet block read slightly negative.
        return max(0.0, foreign / wall)


def over_limit(metrics: dict[str, float], limit: float) -> bool:
    """Whether a block's foreign load passed the limit (a block without a reading is not)."""
    v = metrics.get("foreign_load")
    return v is not None and math.isfinite(v) and v > limit
