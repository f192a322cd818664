"""Trials as Ray tasks: one GPU per trial, or disjoint cores per trial, on one machine or many.

The driver keeps the ask/tell loop; each trial is a Ray core task (max_retries=0: the driver owns
retries) that runs the same isolated worker process as the local executor and returns a plain
result. Workers never touch the database. A per-trial deadline cancels the task by force.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from autotuner.errors import UsageError
from autotuner.execution.base import Executor, TrialRequest
from autotuner.result import TrialResult
from autotuner.runners.base import Device
from autotuner.runners.registry import needs_gpu
from autotuner.spec.loading import spec_to_dict
from autotuner.spec.schema import Spec

GRACE_S = 60.0


def _trial_task(payload: dict[str, Any], timeout_s: float, threads: int) -> dict[str, Any]:
    """Runs on a Ray worker: hold cores on this node, run the trial in a worker process."""
    import ray

    from autotuner.execution.cores import hold_cores
    from autotuner.execution.process import run_worker

    with hold_cores(threads, _node_cpus()) as cores:
        payload["device"]["cores"] = list(cores)
        out = run_worker(payload, timeout_s, threads)
    result = out.to_dict() if isinstance(out, TrialResult) else out
    result.setdefault("info", {})["node"] = ray.get_runtime_context().get_node_id()
    return result


class RayExecutor(Executor):
    def __init__(self, spec: Spec, caps: dict[str, Any], address: str | None = None) -> None:
        super().__init__(spec, caps)
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'autotune[ray]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        env: dict[str, Any] = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
        self.remote_fs = address is not None
        if self.remote_fs:
            # The spec's folder (model factories, ONNX files) travels to every node.
            env["working_dir"] = spec.base_dir
            env["excludes"] = ["studies/", "reports/", ".venv/", ".git/", "*.db"]
        if self.started:
            ray.init(
                # No --address: a cluster of this run's own. Ray would otherwise attach to
                # RAY_ADDRESS or to the last `ray start` cluster of this machine, even a dead one.
                address=address or "local",
                ignore_reinit_error=True,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
                runtime_env=env,
                configure_logging=False,
            )
        self.spec_dict = spec_to_dict(spec)
        if self.remote_fs:
            self.spec_dict["base_dir"] = "."
        total = ray.cluster_resources()
        self.per_trial = max_threads(spec, int(caps.get("cpu_cores", 1)))
        self.slots = max(1, int(total.get("CPU", 1)) // self.per_trial) + int(total.get("GPU", 0))
        self.pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="autotune-ray")
        self.trial = ray.remote(max_retries=0)(_trial_task)

    def _payload(self, config: dict[str, Any], mode: str, **extra: Any) -> dict[str, Any]:
        gpu = needs_gpu(config)
        return {
            "mode": mode,
            "spec": self.spec_dict,
            "config": config,
            "caps": self.caps,
            "device": Device("cuda" if gpu else "cpu", (), 0 if gpu else None).to_dict(),
            **extra,
        }

    def submit(self, request: TrialRequest) -> Future[TrialResult]:
        return self.pool.submit(self._run, request)

    def _run(self, request: TrialRequest) -> TrialResult:
        ray = self.ray
        config = request.config
        threads = int(config.get("threads") or self.per_trial)
        timeout = self.spec.measurement.trial_timeout_s
        ref = self.trial.options(num_cpus=threads, num_gpus=1 if needs_gpu(config) else 0).remote(
            self._payload(config, "trial", block_s=request.block_s), timeout, threads
        )
        ready, _ = ray.wait([ref], timeout=timeout + GRACE_S)
        if not ready:
            ray.cancel(ref, force=True)
            return TrialResult.failure(
                "timeout", f"the Ray task passed {timeout + GRACE_S:g} s and was cancelled"
            )
        try:
            return TrialResult.from_dict(ray.get(ref))
        except ray.exceptions.WorkerCrashedError as e:
            return TrialResult.failure("crash", f"the Ray worker died mid-trial: {_first(e)}")
        except ray.exceptions.NodeDiedError as e:
            return TrialResult.failure("crash", f"the Ray node died mid-trial: {_first(e)}")
        except ray.exceptions.RayError as e:
            return TrialResult.failure("error", f"Ray: {type(e).__name__}: {_first(e)}")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.started:
            self.ray.shutdown()


def _node_cpus() -> int | None:
    """The CPUs Ray was told this node has."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    for n in ray.nodes():
        if n.get("NodeID") == node:
            return int(n.get("Resources", {}).get("CPU", 0)) or None
    return None


def max_threads(spec: Spec, cores: int) -> int:
    p = spec.space.get("threads")
    values = p.values() if p is not None else None
    if not values:
        return cores
    return max(1, max(int(v) for v in values if isinstance(v, int | float)))


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


__all__ = ["RayExecutor", "max_threads"]
