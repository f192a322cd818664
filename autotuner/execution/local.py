"""The embedded default: one trial at a time on this machine, in a fresh worker process."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from autotuner.execution.base import GPUS_VAR, Executor, TrialRequest, trial_gpus, visible_gpus
from autotuner.execution.process import run_worker
from autotuner.execution.warm import WarmWorkers, zygote_modules
from autotuner.result import TrialResult
from autotuner.runners.base import Device
from autotuner.spec.loading import public_spec_dict
from autotuner.spec.schema import Spec
from autotuner.subprocesses import nvidia_smi


def start_warm_workers(spec: Spec) -> WarmWorkers | None:
    """The spec's warm workers, their zygote starting in the background now (its imports take
    5-8 s on 2 cores: started before the machine probe, they overlap it), or None for `fresh`."""
    modules = zygote_modules(spec)
    if modules is None:
        return None
    warm = WarmWorkers(modules)
    warm.begin()
    return warm


class LocalExecutor(Executor):
    """One slot: the machine is one device (its cores, and GPUs 0..N-1 when a config holds N).

    Trials never share cores or GPUs: each worker is pinned to the cores it is measured on, and
    the next trial (or race block) starts only when the last one has ended.
    """

    slots = 1

    def __init__(self, spec: Spec, caps: dict[str, Any], warm: WarmWorkers | None = None) -> None:
        """`warm`: the spec's warm workers, started already (`start_warm_workers`), else they
        start here."""
        super().__init__(spec, caps)
        self.cores = tuple(sorted(os.sched_getaffinity(0)))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autotune-trial")
        self.spec_dict = public_spec_dict(spec)
        self.warm = warm if warm is not None else start_warm_workers(spec)

    def device_for(self, config: dict[str, Any]) -> Device:
        cuda = trial_gpus(self.spec, config) > 0
        return Device(kind="cuda" if cuda else "cpu", cores=self.cores, cuda_index=0 if cuda else None)

    def gpu_ids(self, n: int) -> list[str] | None:
        """The GPUs a config holding n gets: the first n this machine shows (CUDA relative 0..n-1,
        so the first n of CUDA_VISIBLE_DEVICES where the driver has it). None for n = 0: a CPU
        trial's environment is left as it is (nothing else runs beside it here)."""
        if n == 0:
            return None
        shown = os.environ.get(GPUS_VAR)
        if shown is not None:
            return [v.strip() for v in shown.split(",") if v.strip()][:n]
        return [str(i) for i in range(n)]

    def refusal(self, config: dict[str, Any]) -> str | None:
        """Why this machine cannot give the config its GPUs, or None."""
        n = trial_gpus(self.spec, config)
        if n == 0:
            return None
        have = machine_gpus(self.caps)
        if n > have:
            return f"the config holds {n} GPU(s); this machine has {have}"
        return None

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
        why = self.refusal(request.config)
        if why:
            return TrialResult.failure("unsupported", why)
        payload = self.payload_for(request.config, request.block_s)
        payload["give_up_below"] = request.meta.get("give_up_below")
        payload["first_look_s"] = request.meta.get("first_look_s")
        # The one thread of this pool starts workers; the driver itself never initialises CUDA.
        with visible_gpus(self.gpu_ids(trial_gpus(self.spec, request.config))):
            timeout_s, threads = self.spec.measurement.trial_timeout_s, request.config.get("threads")
            out = run_worker(payload, timeout_s, threads, self.warm)
        return out if isinstance(out, TrialResult) else TrialResult.from_dict(out)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.warm is not None:
            self.warm.close()


def machine_gpus(caps: dict[str, Any]) -> int:
    """The GPUs this machine shows: torch's count from the probe; without torch (a command runner
    tuning trtexec), CUDA_VISIBLE_DEVICES's entries or nvidia-smi's GPUs."""
    n = int(caps.get("cuda_devices") or 0)
    if n or not caps.get("nvidia_driver"):
        return n
    shown = os.environ.get(GPUS_VAR)
    if shown is not None:
        return len([v for v in shown.split(",") if v.strip()])
    return len(nvidia_smi("gpu", "index") or [])
