"""The dynamic batcher: a bounded FIFO queue of requests that instances take batches from.

A batch is formed when an instance is free and either `max_batch_size` requests are queued, or
the oldest queued request has waited `timeout_s` (0: take what is queued at once), or the load
has ended (the rest is drained without waiting). A batch holds the oldest requests, in arrival
order; an arrival that finds `queue_limit` requests queued is rejected and counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

ACCEPTED, REJECTED, CLOSED = "accepted", "rejected", "closed"


@dataclass
class Request:
    """One request (one row of the model's inputs) and what happened to it, on perf_counter seconds."""

    id: int
    arrival_s: float  # when it was due to arrive: its latency counts from here
    enqueued_s: float = float("nan")  # when the batcher queued it
    started_s: float = float("nan")  # when its batch began to run
    done_s: float = float("nan")  # when its batch's outputs were ready: the answer
    batch: int = -1  # which batch answered it (numbered over the whole run)
    row: int = -1  # its row in that batch
    answers: int = 0  # times answered: exactly once for an accepted request

    @property
    def latency_s(self) -> float:
        return self.done_s - self.arrival_s


class Batcher:
    def __init__(
        self,
        max_batch_size: int,
        timeout_s: float,
        queue_limit: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.max_batch_size = max_batch_size
        self._clock = clock  # seconds; the tests give a fake one to read the rules off exact times
        self.timeout_s = timeout_s
        self.queue_limit = queue_limit
        self.rejected = 0
        self.depths: list[int] = []  # the queue length each accepted arrival found, itself included
        self.batches = 0
        self._queue: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def submit(self, request: Request) -> str:
        """Queue a request: ACCEPTED, REJECTED (the queue is full; counted) or CLOSED (the load ended)."""
        with self._cond:
            if self._closed:
                return CLOSED
            if len(self._queue) >= self.queue_limit:
                self.rejected += 1
                return REJECTED
            request.enqueued_s = self._clock()
            self._queue.append(request)
            self.depths.append(len(self._queue))
            self._cond.notify_all()
            return ACCEPTED

    def close(self) -> None:
        """No more arrivals: what is queued is taken without waiting, then take() returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self) -> list[Request] | None:
        """The next batch (blocks until one is due), or None once closed and drained."""
        with self._cond:
            while True:
                now = self._clock()
                batch = self._due(now)
                if batch is not None:
                    return batch
                if self._queue:
                    self._cond.wait(self._queue[0].enqueued_s + self.timeout_s - now)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def poll(self) -> list[Request] | None:
        """The batch due now, without waiting; None when none is."""
        with self._cond:
            return self._due(self._clock())

    def _due(self, now: float) -> list[Request] | None:
        """The batch due at `now` (taken off the queue), or None: the queue is empty, or it holds
        fewer than max_batch_size, the oldest has waited less than timeout_s, and the load goes on."""
        if not self._queue:
            return None
        due = self._queue[0].enqueued_s + self.timeout_s
        if len(self._queue) < self.max_batch_size and now < due and not self._closed:
            return None
        n = min(self.max_batch_size, len(self._queue))
        batch = [self._queue.popleft() for _ in range(n)]
        for row, r in enumerate(batch):
            r.batch, r.row = self.batches, row
        self.batches += 1
        self._cond.notify_all()  # what is left may be another instance's batch
        return batch
