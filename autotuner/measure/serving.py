"""The serving scenario's measurement: instances behind the dynamic batcher, driven by a load.

Each instance is a model copy in a thread of its own, pinned to its own cores (torch and ONNX
Runtime release the GIL while they compute); it takes batches from the batcher and runs them.
A run offers requests open loop (arrival times: Poisson or a trace; a request's latency counts
from when it was due, so a late sender does not hide queueing) or closed loop (`concurrency`
clients, each sending its next request when its last is answered), then drains. Everything is
timed with time.perf_counter on the wall clock.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from autotuner.measure.batcher import ACCEPTED, Batcher, Request

OnDone = Callable[[list[Request]], None]


class Instance(Protocol):
    """One model copy: set up in its own (pinned) thread, then runs batches of n rows."""

    def setup(self) -> None: ...

    def run(self, rows: int) -> None:
        """One batch of `rows` rows, finished (on the device too) when it returns."""


class Lane:
    """An instance's thread: pinned to its cores, sets the instance up, then serves batchers."""

    def __init__(
        self, instance: Instance, cores: Sequence[int] | None, warm: Callable[[Instance], None]
    ) -> None:
        self.instance = instance
        self.cores = tuple(cores) if cores else None
        self.error: BaseException | None = None
        self._warm = warm
        self._jobs: queue.Queue[tuple[Batcher, OnDone | None] | None] = queue.Queue()
        self._ready = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._main, name="serving-instance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self) -> None:
        self._ready.wait()
        if self.error is not None:
            raise self.error

    def serve(self, batcher: Batcher, on_done: OnDone | None) -> None:
        self._idle.clear()
        self._jobs.put((batcher, on_done))

    def wait_idle(self) -> None:
        self._idle.wait()

    def stop(self) -> None:
        if self._thread.ident is None:
            return  # never started: an earlier instance failed its setup
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _main(self) -> None:
        try:
            if self.cores and hasattr(os, "sched_setaffinity"):
                # This thread only (its native id); the threads a backend starts from it later
                # (ONNX Runtime's pool at session creation, OpenMP's team) inherit the mask.
                os.sched_setaffinity(threading.get_native_id(), self.cores)
            self.instance.setup()
            self._warm(self.instance)
        except BaseException as e:  # noqa: BLE001 - handed to the worker, which classifies it
            self.error = e
        finally:
            self._ready.set()
        while (job := self._jobs.get()) is not None:
            batcher, on_done = job
            try:
                self._serve(batcher, on_done)
            except BaseException as e:  # noqa: BLE001
                self.error = self.error or e
                batcher.close()
                while batcher.take() is not None:  # the run ends: nothing is left waiting
                    pass
            finally:
                self._idle.set()

    def _serve(self, batcher: Batcher, on_done: OnDone | None) -> None:
        clock = time.perf_counter
        while (batch := batcher.take()) is not None:
            started = clock()
            for r in batch:
                r.started_s = started
            self.instance.run(len(batch))
            done = clock()
            for r in batch:
                r.done_s = done
                r.answers += 1
            if on_done is not None:
                on_done(batch)


def split_cores(cores: Sequence[int], instances: int) -> list[tuple[int, ...]]:
    """Each instance's own share of the cores (equal shares; a remainder stays unused)."""
    share = max(1, len(cores) // instances)
    return [tuple(cores[i * share : (i + 1) * share]) for i in range(instances)]


class Server:
    """The lanes and the batcher settings; each `run_*` is one load, fully drained when it returns."""

    def __init__(self, lanes: list[Lane], max_batch_size: int, timeout_s: float, queue_limit: int) -> None:
        self.lanes = lanes
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.queue_limit = queue_limit

    def start(self) -> None:
        """Set the instances up one after another: a model built from a seeded RNG (torch's is
        process-wide) gets the same weights in every instance."""
        for lane in self.lanes:
            lane.start()
            lane.wait_ready()

    def stop(self) -> None:
        for lane in self.lanes:
            lane.stop()

    def _begin(self, on_done: OnDone | None) -> Batcher:
        batcher = Batcher(self.max_batch_size, self.timeout_s, self.queue_limit)
        for lane in self.lanes:
            lane.serve(batcher, on_done)
        return batcher

    def _end(self, batcher: Batcher) -> None:
        batcher.close()
        for lane in self.lanes:
            lane.wait_idle()
        for lane in self.lanes:
            if lane.error is not None:
                raise lane.error

    def run_open(self, arrivals: np.ndarray) -> tuple[list[Request], Batcher]:
        """Requests due at t0 + arrivals[i]; the accepted ones, answered, and the batcher's counts."""
        batcher = self._begin(None)
        accepted: list[Request] = []
        clock = time.perf_counter
        t0 = clock() + 0.002
        for i, at in enumerate(arrivals):
            due = t0 + float(at)
            wait = due - clock()
            if wait > 0:
                time.sleep(wait)
            r = Request(i, due)
            if batcher.submit(r) == ACCEPTED:
                accepted.append(r)
            if any(lane.error is not None for lane in self.lanes):
                break
        self._end(batcher)
        return accepted, batcher

    def run_closed(self, concurrency: int, duration_s: float, limit: int) -> tuple[list[Request], Batcher]:
        """`concurrency` clients, each sending its next request as soon as its last is answered,
        until duration_s has passed or `limit` requests were sent."""
        lock = threading.Lock()
        accepted: list[Request] = []
        stop = threading.Event()
        sent = 0
        clock = time.perf_counter
        t0 = clock()

        def send() -> None:
            nonlocal sent
            with lock:
                if stop.is_set() or sent >= limit or clock() - t0 >= duration_s:
                    stop.set()
                    return
                r = Request(sent, clock())
                sent += 1
                if batcher.submit(r) == ACCEPTED:
                    accepted.append(r)

        def on_done(batch: list[Request]) -> None:
            for _ in batch:
                send()

        batcher = self._begin(on_done)
        for _ in range(concurrency):
            send()
        stop.wait(duration_s)
        stop.set()
        self._end(batcher)
        return sorted(accepted, key=lambda r: r.id), batcher


def percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    return [float(x) for x in np.percentile(values, qs)] if len(values) else [float("nan")] * len(qs)


def summarize(
    accepted: list[Request], batcher: Batcher, slo_ms: float | None, warmup_s: float
) -> dict[str, float]:
    """The per-request metrics of one run. Requests due in its first warmup_s are left out of the
    latencies and rates (an empty system at the start); counts of the batcher cover the whole run."""
    if not accepted:
        return {"rejected_requests": float(batcher.rejected), "requests_s": 0.0}
    start = min(r.arrival_s for r in accepted)
    kept = [r for r in accepted if r.arrival_s >= start + warmup_s] or accepted
    ms = np.array([r.latency_s for r in kept]) * 1e3
    span = max(r.done_s for r in kept) - min(r.arrival_s for r in kept)
    span = span if span > 0 else float("nan")
    p50, p95, p99 = percentiles(ms, (50, 95, 99))
    depths = np.array(batcher.depths, dtype=np.float64)
    out = {
        "request_latency_p50_ms": p50,
        "request_latency_p95_ms": p95,
        "request_latency_p99_ms": p99,
        "requests_s": len(kept) / span,
        "mean_batch_size": len(accepted) / max(1, batcher.batches),
        "queue_depth_p95": percentiles(depths, (95,))[0],
        "queue_depth_max": float(depths.max()),
        "rejected_requests": float(batcher.rejected),
    }
    if slo_ms is not None:
        out["goodput_requests_s"] = float(np.sum(ms <= slo_ms)) / span
    return out


def meets_slo(accepted: list[Request], batcher: Batcher, slo_ms: float, warmup_s: float) -> bool:
    """Whether the p95 latency of every request sent (a rejected one counted as a miss) is within
    slo_ms."""
    if not accepted:
        return False
    start = min(r.arrival_s for r in accepted)
    kept = [r for r in accepted if r.arrival_s >= start + warmup_s] or accepted
    missed = np.full(batcher.rejected, 1e12)  # a rejected request: later than any SLO (finite: no inf - inf)
    ms = np.concatenate([np.array([r.latency_s for r in kept]) * 1e3, missed])
    return bool(np.percentile(ms, 95) <= slo_ms)


def find_max_rate(passes: Callable[[float], bool], low: float, high: float, steps: int) -> float:
    """The highest rate in [low, high] for which passes(rate) holds, assuming it holds below some
    threshold and fails above: low and high are tried, then `steps` geometric midpoints. 0.0 when
    even `low` fails; `high` when it passes (the answer is then at least high)."""
    if not passes(low):
        return 0.0
    if passes(high):
        return high
    lo, hi = low, high
    for _ in range(steps):
        mid = (lo * hi) ** 0.5
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo
