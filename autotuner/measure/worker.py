"""The worker: measures one block of one config (a search trial or a re-measurement) in its own process.

    python -m autotuner.measure.worker REQUEST.json RESULT.json [--watch FD DEADLINE_S]

With --watch it first arms its watcher (see watchdog): it ends, with everything it started, at
its deadline or when the process that started it dies. It never touches the study database; it
writes a plain result file that the executor reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from autotuner.errors import UnsupportedConfig
from autotuner.measure.accuracy import ReferenceMismatch
from autotuner.measure.build import build
from autotuner.measure.scenarios import BatchScenario, Scenario, ServingScenario, WorkloadScenario
from autotuner.measure.telemetry import probe_for
from autotuner.models.tasks import TaskMetricError
from autotuner.result import TrialResult
from autotuner.runners.base import Device, TimedRunner, WorkloadRunner
from autotuner.spec.loading import parse_spec
from autotuner.spec.schema import Spec
from autotuner.watchdog import arm

_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "failed to allocate memory",
    "unable to allocate",
    "cannot allocate memory",
    "bad_alloc",
    "no requests can be scheduled",  # transformers: a KV cache too small to hold one request
)


def classify(exc: BaseException) -> TrialResult:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
    if isinstance(exc, UnsupportedConfig):
        refused = {"refused": exc.refused} if exc.refused else {}
        return TrialResult.failure("unsupported", str(exc), **refused)
    if isinstance(exc, subprocess.TimeoutExpired):
        return TrialResult.failure("timeout", f"the command ran past its {exc.timeout:g} s and was killed")
    if isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKERS):
        return TrialResult.failure("oom", text)
    return TrialResult.failure("error", text)


def pin(device: Device, config: dict[str, Any]) -> None:
    """Hold exactly the cores the trial is measured on."""
    threads = int(config.get("threads") or len(device.cores))
    cores = device.cores[: max(1, threads)]
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def scenario_for(spec: Spec, config: dict[str, Any], device: Device, caps: dict[str, Any]) -> Scenario:
    """The spec's scenario for a config, with its runner built (serving builds its instances
    when it runs, as part of its setup)."""
    if spec.scenario == "serving":
        return ServingScenario(spec, config, caps)
    runner = build(spec, config, device, caps)
    if isinstance(runner, WorkloadRunner):
        return WorkloadScenario(spec, runner)
    assert isinstance(runner, TimedRunner), f"{type(runner).__name__} is neither timed nor a workload"
    return BatchScenario(spec, config, runner)


def run_trial(
    spec: Spec,
    config: dict[str, Any],
    device: Device,
    caps: dict[str, Any],
    block_s: float | None = None,
    give_up_below: float | None = None,
    first_look_s: float | None = None,
) -> TrialResult:
    """One measurement block of a config in this fresh process (see `Scenario`); whatever goes
    wrong becomes a classified failure."""

    pin(device, config)
    probe = probe_for(device)  # before setup: the GPU memory baseline
    try:
        scenario = scenario_for(spec, config, device, caps)
        scenario.give_up_below = give_up_below
        scenario.first_look_s = first_look_s
        return scenario.run(device, probe, block_s)
    except TaskMetricError as e:
        return TrialResult.failure("invalid-metric", str(e))
    except ReferenceMismatch as e:  # what it measured is kept, and says which model it was
        return TrialResult(False, e.metrics, "reference-mismatch", str(e))
    except Exception as e:  # noqa: BLE001 - every failure becomes classified data
        return classify(e)
    finally:
        probe.close()


def main(argv: list[str]) -> int:
    if len(argv) >= 6 and argv[3] == "--watch":
        arm(int(argv[4]), float(argv[5]))  # first: before a model can hang or start anything

    request = json.loads(Path(argv[1]).read_text())
    # Start-up: the driver asked for the block -> here (fresh interpreter or forked warm worker).
    startup_s = time.time() - request["asked_at"] if "asked_at" in request else None
    out_path = Path(argv[2])
    spec = parse_spec(request["spec"])
    device = Device.from_dict(request["device"])
    caps = request["caps"]
    floor = request.get("give_up_below")
    result = run_trial(
        spec, request["config"], device, caps, request.get("block_s"), floor, request.get("first_look_s")
    )
    if startup_s is not None:
        result.metrics["worker_startup_s"] = max(0.0, startup_s)
    if spec.model_digest is not None:  # which model was measured: a retrained one is another
        result.info.setdefault("model_sha256", spec.model_digest)
    payload = result.to_dict()
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
