"""The embedded default: one trial at a time on this machine, in a fresh worker process."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from autotuner.execution.base import Executor, TrialRequest
from autotuner.execution.process import run_worker
from autotuner.result import TrialResult
from autotuner.runners.base import Device
from autotuner.runners.registry import needs_gpu
from autotuner.spec.loading import spec_to_dict
from autotuner.spec.schema import Spec


class LocalExecutor(Executor):
    """One slot: the machine is one device (its cores, and GPU 0 when a config asks for CUDA).

    Trials never share cores: each worker is pinned to the cores it is measured on, and the next
    trial starts only when the last one has ended.
    """

    slots = 1

    def __init__(self, spec: Spec, caps: dict[str, Any]) -> None:
        super().__init__(spec, caps)
        self.cores = tuple(sorted(os.sched_getaffinity(0)))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autotune-trial")
        self.spec_dict = spec_to_dict(spec)

    def device_for(self, config: dict[str, Any]) -> Device:
        cuda = needs_gpu(config)
        return Device(kind="cuda" if cuda else "cpu", cores=self.cores, cuda_index=0 if cuda else None)

    def submit(self, request: TrialRequest) -> Future[TrialResult]:
        return self.pool.submit(self._run, request)

    def payload_for(self, config: dict[str, Any], block_s: float | None = None) -> dict[str, Any]:
        """The worker's request for one block of a config."""
        return {
            "mode": "trial",
            "spec": self.spec_dict,
            "config": config,
            "device": self.device_for(config).to_dict(),
            "caps": self.caps,
            "block_s": block_s,
        }

    def _run(self, request: TrialRequest) -> TrialResult:
        payload = self.payload_for(request.config, request.block_s)
        out = run_worker(payload, self.spec.measurement.trial_timeout_s, request.config.get("threads"))
        return out if isinstance(out, TrialResult) else TrialResult.from_dict(out)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
