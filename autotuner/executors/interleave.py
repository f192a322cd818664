"""Measuring the top candidates again, interleaved, each in a worker process of its own."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autotuner.executors.process import _LIVE, _kill_group, _tail, worker_env
from autotuner.worker import PROTOCOL


class ServedWorker:
    """A worker in 'serve' mode: set up once, then one measurement block per request."""

    def __init__(self, request: dict[str, Any], threads: int | None) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="autotune-pick-")
        req = Path(self.dir.name) / "request.json"
        req.write_text(json.dumps(request))
        self.log_path = Path(self.dir.name) / "worker.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autotuner.worker", str(req), os.devnull],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=worker_env(threads),
            start_new_session=True,
        )
        _LIVE.add(self.proc)

    def read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"error": f"no answer within {timeout_s:g} s"}
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                code = self.proc.wait()
                return {"error": f"worker exited {code}: {_tail(self.log_path)}"}
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL) :])

    def measure(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"measure\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"error": f"worker is gone: {_tail(self.log_path)}"}
        return self.read(timeout_s)

    def close(self) -> None:
        _kill_group(self.proc)
        _LIVE.discard(self.proc)
        self.log.close()
        self.dir.cleanup()


def remeasure(
    make_request: Any, candidates: list[dict[str, Any]], rounds: int, timeout_s: float
) -> dict[str, Any]:
    """Set the candidates up one after another, then measure them round-robin, rotating the
    order each round so that no candidate always follows the same neighbour."""
    workers: dict[int, ServedWorker] = {}
    errors: dict[str, str] = {}
    per: dict[str, list[dict[str, float]]] = {}
    try:
        for i, config in enumerate(candidates):
            w = ServedWorker(make_request(config), config.get("threads"))
            hello = w.read(timeout_s)
            if "error" in hello:
                errors[str(i)] = hello["error"]
                w.close()
                continue
            workers[i] = w
            per[str(i)] = []
        order = list(workers)
        for r in range(rounds):
            k = r % len(order) if order else 0
            for i in order[k:] + order[:k]:
                if str(i) in errors:
                    continue
                got = workers[i].measure(timeout_s)
                if "error" in got:
                    errors[str(i)] = got["error"]
                else:
                    per[str(i)].append(got)
    finally:
        for w in workers.values():
            w.close()
    return {"rounds": per, "errors": errors}
