"""The runner conformance suite, shipped so that a third-party runner's own tests can run it.

    from autotuner.conformance import check_declarations, check_one_trial, check_timed

    def test_my_runner(caps):
        assert check_declarations(MyRunner) == []
        assert check_one_trial(spec, {"backend": "my-backend", "batch_size": 2}, caps) == []

Each check returns the problems it found, in words (an empty list: the runner conforms), so a
test reports every broken promise at once. The checks run the real worker path: a runner that
passes them works under `autotune run`.

It sits above the stages (it drives a runner through the worker, the harness and the accuracy
check), beside the API.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from autotuner.measure.accuracy import compare
from autotuner.measure.build import build
from autotuner.measure.harness import HarnessSettings, measure
from autotuner.measure.worker import run_trial
from autotuner.models.artifacts import accuracy_inputs, reference_outputs
from autotuner.models.builtins import model_inputs
from autotuner.models.inputs import chunks, make_inputs
from autotuner.runners.base import Device, Runner, TimedRunner, WorkloadRunner
from autotuner.runners.exclusive import refusal
from autotuner.runners.registry import all_backends
from autotuner.spec.schema import Spec

QUICK = HarnessSettings(warmup_iters=1, min_iters=3, min_time_s=0.01, max_time_s=0.2)


def check_declarations(cls: type[Runner]) -> list[str]:
    """What the core reads from a runner class: a name, backends it alone owns, fp32, one contract."""
    problems = []
    if not getattr(cls, "name", ""):
        problems.append("declares no name")
    if not getattr(cls, "backends", ()):
        problems.append("declares no backends")
    precision = cls.declared("precision")
    offered = tuple(precision.choices or ()) if precision else ()
    if "fp32" not in offered and not cls.open_knobs:
        problems.append(f"does not offer fp32 (offers {', '.join(map(str, offered))})")
    if issubclass(cls, TimedRunner) == issubclass(cls, WorkloadRunner):
        problems.append("must subclass exactly one of TimedRunner and WorkloadRunner")
    table = all_backends()
    for b in getattr(cls, "backends", ()):
        if table.get(b) not in (None, cls.name):
            problems.append(f"backend {b!r} is also claimed by runner {table[b]!r}")
    if (cls.settings_key is None) != (cls.Settings is None):
        problems.append("settings_key and Settings come together")
    return problems


def check_timed(
    spec: Spec, config: dict[str, Any], caps: dict[str, Any], device: Device | None = None
) -> tuple[list[str], dict[str, float]]:
    """A timed runner through setup, a timed step, predict on the accuracy inputs and teardown.
    Returns (problems, the accuracy metrics against the fp32 reference)."""
    device = device or Device("cpu", (0,))
    runner = build(spec, config, device, caps)
    if not isinstance(runner, TimedRunner):
        return [f"{type(runner).__name__} is not a TimedRunner"], {}
    problems = []
    batch_size = int(runner.knob(runner.config, "batch_size"))
    runner.setup()
    specs = model_inputs(spec)
    step = runner.prepare(make_inputs(specs, batch_size, spec.data_seed))
    metrics, samples = measure(step, QUICK, batch_size, runner.synchronize)
    if metrics["n_iterations"] < QUICK.min_iters:
        problems.append(f"the step ran {metrics['n_iterations']:g} times, fewer than {QUICK.min_iters}")
    if len(samples) != min(QUICK.keep_samples, int(metrics["n_iterations"])):
        problems.append("the harness kept the wrong number of samples")
    if not 0 < metrics["latency_p50_ms"] <= metrics["latency_p99_ms"]:
        problems.append(f"latencies out of order: {metrics['latency_p50_ms']}, {metrics['latency_p99_ms']}")
    outs = [runner.predict(b)[:n] for b, n in chunks(accuracy_inputs(spec), specs, batch_size)]
    out = np.concatenate(outs)
    if out.dtype != np.float32:
        problems.append(f"predict returned {out.dtype}, not float32")
    runner.teardown()
    return problems, compare(out.astype(np.float32), reference_outputs(spec))


def check_one_trial(spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> list[str]:
    """One real trial through the worker's own path: refused by nobody, finite float metrics,
    a positive first objective."""
    reason = refusal(spec, config, caps)
    if reason:
        return [f"check refused the config: {reason}"]
    result = run_trial(spec, config, Device("cpu", tuple(sorted(os.sched_getaffinity(0)))), caps)
    if not result.ok:
        return [f"the trial failed: {result.failure_class}: {result.failure_message}"]
    problems = []
    objective = spec.objectives[0].metric
    v = result.metrics.get(objective)
    if v is None or not math.isfinite(v) or v <= 0:
        problems.append(f"objective {objective} is {v!r}")
    odd = [k for k, x in result.metrics.items() if not isinstance(x, float)]
    if odd:
        problems.append(f"metrics that are not floats: {', '.join(odd)}")
    return problems
