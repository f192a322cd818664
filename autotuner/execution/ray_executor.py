"""Trials as Ray tasks: N GPUs per GPU trial, or disjoint cores per CPU trial, on one machine or many.

The driver keeps the ask/tell loop; each trial is a Ray core task (max_retries=0: the driver owns
retries) that runs the same isolated worker process as the local executor and returns a plain
result; with warm workers (the default) that process is a fork of a zygote that each Ray worker
process keeps, as the local executor keeps one. Workers never touch the database. A per-trial
deadline cancels the task by force.

What a trial asks of Ray (`trial_options`) and how many run at once (`slot_count`) are pure
functions of the cluster's nodes; the worker sees exactly the GPUs Ray assigned its task.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from typing import Any

from autotuner.errors import UsageError
from autotuner.execution.base import Executor, TrialRequest, trial_gpus, visible_gpus
from autotuner.execution.capabilities import probe
from autotuner.execution.cores import hold_cores
from autotuner.execution.process import run_worker
from autotuner.execution.ray_cluster import describe, join, session_name
from autotuner.execution.warm import shared_warm_workers, zygote_modules
from autotuner.result import TrialResult
from autotuner.runners.base import Device
from autotuner.spec.loading import public_spec_dict
from autotuner.spec.schema import Spec

GRACE_S = 60.0
PROBE_WAIT_S = 180.0
# The probe's facts that belong to the GPU node where GPU trials run, not to the driver.
NODE_CAPS = (
    "cuda_devices",
    "gpus",
    "cuda_bf16",
    "gpu_memory_mb",
    "ort_providers",
    "torch_cuda",
    "nvidia_driver",
    # What the checks of GPU trials read beside the GPUs (issue 23 M6): a CPU-only head without
    # flash-attn, a C compiler or the GPU providers' libraries must not refuse (or admit) a trial
    # for the GPU node.
    "flash_attn",
    "libraries",
    "ort_providers_loaded",
    "ort_provider_errors",
    "ort_libraries",
    "c_compiler",
    "python_headers",
)


@dataclass(frozen=True)
class Node:
    """One alive node of the cluster, as Ray counts it."""

    node_id: str
    ip: str
    cpus: int
    gpus: int


def cluster_nodes(ray_nodes: Iterable[dict[str, Any]]) -> list[Node]:
    """The alive nodes of `ray.nodes()`."""
    return [
        Node(
            str(n.get("NodeID", "")),
            str(n.get("NodeManagerAddress", "")),
            int(n.get("Resources", {}).get("CPU", 0)),
            int(n.get("Resources", {}).get("GPU", 0)),
        )
        for n in ray_nodes
        if n.get("Alive", True)
    ]


def cpus_per_gpu(nodes: Iterable[Node]) -> int:
    """A GPU's share of its node's CPUs: node CPUs / node GPUs, the smallest over the GPU nodes
    (so every GPU of every node can hold a trial), at least 1."""
    shares = [n.cpus // n.gpus for n in nodes if n.gpus > 0]
    return max(1, min(shares)) if shares else 1


def trial_options(threads: int | None, gpus: int, per_trial: int, gpu_share: int) -> dict[str, int]:
    """What one trial asks Ray for: num_gpus = the GPUs it holds; num_cpus = its threads when the
    config sets them, else a GPU trial's share of its node (gpu_share per GPU), else per_trial
    (a CPU trial: the space's most threads)."""
    if threads:
        cpus = int(threads)
    elif gpus > 0:
        cpus = gpu_share * gpus
    else:
        cpus = per_trial
    return {"num_cpus": max(1, cpus), "num_gpus": int(gpus)}


def fits(node: Node, shape: dict[str, int]) -> bool:
    """Whether the node holds one trial of this shape (its CPUs and its GPUs, on the one node)."""
    return node.cpus >= shape["num_cpus"] and node.gpus >= shape["num_gpus"]


def slot_count(nodes: Iterable[Node], shapes: Iterable[dict[str, int]]) -> int:
    """How many trials can run at once: per node, as many of the space's biggest GPU trial as its
    GPUs and CPUs hold, then as many of its biggest CPU trial as the CPUs left hold. Never more
    than the cluster runs at once, so that no trial waits in Ray's queue on its deadline. A shape
    that no node holds is refused (`RayExecutor.refusal`), so it sizes nothing."""
    nodes = list(nodes)
    shapes = [s for s in shapes if any(fits(n, s) for n in nodes)]
    gpu = [s for s in shapes if s["num_gpus"] > 0]
    cpu = [s for s in shapes if s["num_gpus"] == 0]
    g_gpus = max((s["num_gpus"] for s in gpu), default=0)
    g_cpus = max((s["num_cpus"] for s in gpu), default=0)
    c_cpus = max((s["num_cpus"] for s in cpu), default=0)
    total = 0
    for n in nodes:
        on_gpus = min(n.gpus // g_gpus, n.cpus // max(1, g_cpus)) if g_gpus else 0
        left = n.cpus - on_gpus * g_cpus
        total += on_gpus + (left // c_cpus if c_cpus else 0)
    return max(1, total)


def refusal(nodes: Iterable[Node], shape: dict[str, int]) -> str | None:
    """Why no node of the cluster can hold a trial of this shape (Ray would queue its task until
    the deadline), or None."""
    nodes = list(nodes)
    if any(fits(n, shape) for n in nodes):
        return None
    cpus, gpus = shape["num_cpus"], shape["num_gpus"]
    most_gpus = max((n.gpus for n in nodes), default=0)
    if gpus > most_gpus:
        return f"the config holds {gpus} GPU(s); no node of the Ray cluster has more than {most_gpus}"
    held = ", ".join(f"{n.ip or n.node_id[:12]}: {n.cpus} CPU(s), {n.gpus} GPU(s)" for n in nodes)
    asks = f"{cpus} CPU(s)" + (f" and {gpus} GPU(s)" if gpus else "")
    return f"the config needs {asks} on one node (threads); no node of the Ray cluster holds that ({held})"


def merge_caps(driver: dict[str, Any], node: dict[str, Any], node_gpus: int) -> dict[str, Any]:
    """The driver's capabilities with a GPU node's GPU facts. The node's probe ran holding one
    GPU (Ray shows a task only its own), so the node's count is Ray's where the probe saw CUDA."""
    caps = {k: v for k, v in driver.items() if k not in NODE_CAPS}
    caps.update({k: node[k] for k in NODE_CAPS if k in node})
    caps["cuda_devices"] = node_gpus if int(node.get("cuda_devices") or 0) > 0 else 0
    return caps


def _trial_task(
    payload: dict[str, Any], timeout_s: float, threads: int, warm_modules: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Runs on a Ray worker: hold cores on this node, run the trial in a worker process that sees
    exactly the GPUs Ray assigned this task (none for a CPU trial). With `warm_modules` (the
    spec's `measurement.workers: warm`) that process is forked from this Ray worker's zygote,
    which imported them once (execution.warm.shared_warm_workers), else a fresh interpreter."""
    import ray  # noqa: PLC0415 (heavy: ray)

    ctx = ray.get_runtime_context()
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    warm = shared_warm_workers(tuple(warm_modules)) if warm_modules is not None else None
    with hold_cores(threads, _node_cpus()) as cores, visible_gpus(gpu_ids):
        held_from = time.time()
        payload["device"]["cores"] = list(cores)
        out = run_worker(payload, timeout_s, threads, warm)
        held_until = time.time()
    result = out.to_dict() if isinstance(out, TrialResult) else out
    info = result.setdefault("info", {})
    info["node"] = ctx.get_node_id()
    info["ray_worker_pid"] = os.getpid()  # kept between tasks: so is its zygote
    # The cores this trial held (its worker was pinned to them) and when, on the node's clock.
    info["cores"] = {"held": list(cores), "from": held_from, "until": held_until}
    info["node_ip"] = ray.util.get_node_ip_address()
    info["ray_session"] = session_name(ray)
    info["gpu_ids"] = gpu_ids
    info["ray_resources"] = {k: float(v) for k, v in ctx.get_assigned_resources().items()}
    return result


def _probe_task() -> dict[str, Any]:
    """Runs on a Ray worker that holds one GPU: this node's capabilities."""
    import ray  # noqa: PLC0415 (heavy: ray)

    caps = probe()
    caps["probe_node"] = ray.get_runtime_context().get_node_id()
    caps["probe_gpu_ids"] = [str(i) for i in ray.get_gpu_ids()]
    return caps


class RayExecutor(Executor):
    def __init__(self, spec: Spec, caps: dict[str, Any], address: str | None = None) -> None:
        super().__init__(spec, dict(caps))
        try:
            import ray  # noqa: PLC0415 (heavy: ray)
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
            join(
                ray,
                address,
                {
                    "ignore_reinit_error": True,
                    "include_dashboard": False,
                    "log_to_driver": False,
                    "logging_level": "ERROR",
                    "runtime_env": env,
                    "configure_logging": False,
                },
            )
        self.spec_dict = public_spec_dict(spec)
        # What each Ray worker's zygote imports (None: a fresh interpreter per block).
        self.warm_modules = zygote_modules(spec)
        if self.remote_fs:
            self.spec_dict["base_dir"] = "."
        self.nodes = cluster_nodes(ray.nodes())
        self.cluster_note = describe(ray, address, self.nodes, joined_before=not self.started)
        if any(n.gpus for n in self.nodes):
            self.caps_note = self._probe_gpu_node()
        # A CPU trial whose config sets no threads takes the driver's cores, as many as a node holds.
        biggest = max((n.cpus for n in self.nodes), default=1)
        self.per_trial = min(max_threads(spec, int(self.caps.get("cpu_cores", 1))), max(1, biggest))
        self.gpu_share = cpus_per_gpu(self.nodes)
        self.slots = slot_count(self.nodes, self._shapes())
        self.pool_size = self.slots
        self.lock = threading.Lock()
        self.lost: set[str] = set()
        self.pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="autotune-ray")
        self.trial = ray.remote(max_retries=0)(_trial_task)

    def _probe_gpu_node(self) -> str:
        """Probe on a GPU node (a task holding one GPU), where GPU trials run, and take its GPU
        facts: a CPU-only head node must not refuse every CUDA config. Returns what to say."""
        ray = self.ray
        ref = ray.remote(num_cpus=0, num_gpus=1, max_retries=0)(_probe_task).remote()
        ready, _ = ray.wait([ref], timeout=PROBE_WAIT_S)
        if not ready:
            ray.cancel(ref, force=True)
            return f"capabilities: no GPU node answered the probe in {PROBE_WAIT_S:g} s; using the driver's"
        try:
            node_caps = ray.get(ref)
        except ray.exceptions.RayError as e:
            return f"capabilities: the GPU node's probe failed ({_first(e)}); using the driver's"
        if node_caps.get("probe_error"):
            why = str(node_caps["probe_error"])[:200]
            return f"capabilities: the GPU node's probe failed ({why}); using the driver's"
        node = next((n for n in self.nodes if n.node_id == node_caps.get("probe_node")), None)
        count = node.gpus if node else 1
        self.caps = merge_caps(self.caps, node_caps, count)
        self.caps["probed_on"] = {
            "node": node_caps.get("probe_node"),
            "ip": node.ip if node else "",
            "gpu_ids": node_caps.get("probe_gpu_ids", []),
        }
        names = ", ".join(dict.fromkeys(node_caps.get("gpus") or [])) or "no CUDA device seen by torch"
        where = f"{node.ip} ({node.node_id[:12]})" if node else str(node_caps.get("probe_node"))
        return f"capabilities of GPU node {where}: {self.caps['cuda_devices']} GPU(s), {names}"

    def _shapes(self) -> list[dict[str, int]]:
        """The Ray asks of the space's kinds of trial: every backend x device x threads value."""
        space = self.spec.space
        backends = self.spec.backends
        devices = (space["device"].values() or [None]) if "device" in space else [None]
        threads = (space["threads"].values() or [None]) if "threads" in space else [None]
        shapes = []
        for b, d, t in product(backends, devices, threads):
            config = {"backend": b, **({"device": d} if d is not None else {}), "threads": t}
            shapes.append(self.options_for(config))
        return shapes

    def options_for(self, config: dict[str, Any]) -> dict[str, int]:
        """What Ray is asked for one trial (or race block) of this config."""
        gpus = trial_gpus(self.spec, config)
        return trial_options(config.get("threads"), gpus, self.per_trial, self.gpu_share)

    def refusal(self, config: dict[str, Any]) -> str | None:
        """Why no node can hold the config's CPUs and GPUs (its task would wait forever), or None."""
        return refusal(self.nodes, self.options_for(config))

    def _payload(self, config: dict[str, Any], mode: str, **extra: Any) -> dict[str, Any]:
        gpu = trial_gpus(self.spec, config) > 0
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
        why = self.refusal(config)
        if why:
            return TrialResult.failure("unsupported", why)
        opts = self.options_for(config)
        timeout = self.spec.measurement.trial_timeout_s
        ref = self.trial.options(**opts).remote(
            self._payload(
                config,
                "trial",
                block_s=request.block_s,
                give_up_below=request.meta.get("give_up_below"),
                first_look_s=request.meta.get("first_look_s"),
            ),
            timeout,
            opts["num_cpus"],
            self.warm_modules,
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
            left = self._recount(dead_node(str(e)))
            why = _first(e).split(". This can happen")[0]  # Ray's guesses at a cause follow
            return TrialResult.failure("crash", f"the Ray node died mid-trial: {why} ({left})")
        except ray.exceptions.RayError as e:
            return TrialResult.failure("error", f"Ray: {type(e).__name__}: {_first(e)}")

    def _recount(self, dead: str | None) -> str:
        """Count the slots again from the nodes still alive (the driver reads `slots` before each
        submit), so that trials do not queue in Ray for a node that is gone. Ray's node table says
        a node is dead only after its health checks fail (seconds later): the node the error names
        is left out at once. Returns what is left."""
        with self.lock:
            if dead:
                self.lost.add(dead)
            alive = [n for n in cluster_nodes(self.ray.nodes()) if n.node_id not in self.lost]
            if alive:
                self.nodes = alive
                self.slots = min(self.pool_size, slot_count(alive, self._shapes()))
            cpus = sum(n.cpus for n in self.nodes)
            return f"the cluster now has {len(self.nodes)} node(s), {cpus} CPU(s): {self.slots} at once"

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.started:
            self.ray.shutdown()


def dead_node(message: str) -> str | None:
    """The node ID a NodeDiedError names ("... node ID: 3f2a..."), or None."""
    m = re.search(r"node ID: ([0-9a-f]{16,})", message)
    return m.group(1) if m else None


def _node_cpus() -> int | None:
    """The CPUs Ray was told this node has."""
    import ray  # noqa: PLC0415 (heavy: ray)

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


__all__ = [
    "RayExecutor",
    "cluster_nodes",
    "cpus_per_gpu",
    "fits",
    "max_threads",
    "merge_caps",
    "refusal",
    "slot_count",
    "trial_options",
]
