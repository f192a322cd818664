"""The worker: runs one trial (or the re-measurement of the top candidates) in its own process.

    python -m autotuner.worker REQUEST.json RESULT.json

It never touches the study database; it writes a plain result file that the executor reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.errors import UnsupportedConfig
from autotuner.harness import HarnessSettings, measure
from autotuner.result import TrialResult
from autotuner.runner import Device, Runner, host_peak_rss_mb
from autotuner.spec import Spec

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
        return TrialResult.failure("unsupported", str(exc))
    if isinstance(exc, subprocess.TimeoutExpired):
        return TrialResult.failure("timeout", f"the command ran past its {exc.timeout:g} s and was killed")
    if isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKERS):
        return TrialResult.failure("oom", text)
    return TrialResult.failure("error", text)


def settings_of(spec: Spec) -> HarnessSettings:
    m = spec.measurement
    return HarnessSettings(
        warmup_iters=m.warmup_iters,
        min_iters=m.min_iters,
        max_iters=m.max_iters,
        min_time_s=m.min_time_s,
        max_time_s=m.max_time_s,
        cv_target=m.cv_target,
        keep_samples=m.keep_samples,
    )


def pin(device: Device, config: dict[str, Any]) -> None:
    """Hold exactly the cores the trial is measured on."""
    threads = int(config.get("threads") or len(device.cores))
    cores = device.cores[: max(1, threads)]
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def build(spec: Spec, config: dict[str, Any], device: Device, caps: dict[str, Any]) -> Runner:
    from autotuner.registry import runner_for

    cls = runner_for(str(config.get("backend", "torch-eager")))
    reason = cls.check(spec, config, caps)
    if reason:
        raise UnsupportedConfig(reason)
    return cls(spec, config, device)


def run_trial(spec: Spec, config: dict[str, Any], device: Device, caps: dict[str, Any]) -> TrialResult:
    from autotuner.accuracy import compare
    from autotuner.inputs import chunks, make_inputs
    from autotuner.models import model_inputs
    from autotuner.prepare import accuracy_inputs, reference_outputs

    pin(device, config)
    try:
        runner = build(spec, config, device, caps)
        if runner.external:
            started = time.perf_counter()
            metrics = runner.run_external()
            return TrialResult(ok=True, metrics={**metrics, "measure_s": time.perf_counter() - started})
        batch_size = int(config.get("batch_size", 1))
        specs = model_inputs(spec)
        started = time.perf_counter()
        runner.setup()
        batch = make_inputs(specs, batch_size, spec.seed)
        step = runner.prepare(batch)
        step()  # the first call (lazy init, compilation) belongs to setup
        runner.synchronize()
        setup_s = time.perf_counter() - started
        runner.activate()
        metrics, samples = measure(step, settings_of(spec), batch_size, runner.synchronize)
        metrics["setup_s"] = setup_s
        metrics["host_rss_mb"] = host_peak_rss_mb()
        device_mb = runner.device_peak_memory_mb()
        metrics["peak_memory_mb"] = device_mb if device_mb is not None else metrics["host_rss_mb"]
        ref = reference_outputs(spec)
        outs = [runner.predict(b)[:n] for b, n in chunks(accuracy_inputs(spec), specs, batch_size)]
        metrics.update(compare(np.concatenate(outs), ref))
        runner.teardown()
    except Exception as e:  # noqa: BLE001 - every failure becomes classified data
        return classify(e)
    return TrialResult(ok=True, metrics=metrics, latency_samples_ms=samples)


PROTOCOL = "@@autotune "


def serve(
    spec: Spec, config: dict[str, Any], device: Device, caps: dict[str, Any], round_time_s: float
) -> int:
    """Hold one candidate set up and measure a block each time the driver writes 'measure'.

    Used to measure the top candidates again, interleaved: each candidate lives in its own
    process (as in its trial), and the processes that wait sleep on a pipe, so they do not
    disturb the one being measured.
    """
    from autotuner.inputs import make_inputs
    from autotuner.models import model_inputs

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(PROTOCOL + json.dumps(obj) + "\n")
        sys.stdout.flush()

    pin(device, config)
    base = settings_of(spec)
    block = HarnessSettings(
        warmup_iters=1,
        min_iters=min(base.min_iters, 5),
        max_iters=base.max_iters,
        min_time_s=round_time_s,
        max_time_s=round_time_s,
        cv_target=0.0,
        keep_samples=0,
    )
    try:
        runner = build(spec, config, device, caps)
        runner.setup()
        bs = int(config.get("batch_size", 1))
        step = runner.prepare(make_inputs(model_inputs(spec), bs, spec.seed))
        for _ in range(max(1, base.warmup_iters)):
            step()
        runner.synchronize()
    except Exception as e:  # noqa: BLE001
        reply({"error": classify(e).failure_message})
        return 0
    reply({"ready": True})
    for line in sys.stdin:
        if line.strip() != "measure":
            break
        runner.activate()
        metrics, _ = measure(step, block, bs, runner.synchronize)
        reply(metrics)
    return 0


def main(argv: list[str]) -> int:
    from autotuner.spec_load import spec_from_dict

    request = json.loads(Path(argv[1]).read_text())
    out_path = Path(argv[2])
    spec = spec_from_dict(request["spec"])
    device = Device.from_dict(request["device"])
    caps = request["caps"]
    if request.get("mode") == "serve":
        return serve(spec, request["config"], device, caps, request["round_time_s"])
    payload = run_trial(spec, request["config"], device, caps).to_dict()
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
