"""The runner contracts: the one interface that grows. One module and one registration per runner.

Two kinds of runner share a small base (`Runner`: its name, backends, its knobs each declared
once (runners.knobs.Knob), the spec section it owns, and a fast `check`):

- `TimedRunner`: runs in the worker, and the harness times the step it returns
  (`setup` -> `prepare(batch)` -> step, `predict` for the accuracy check, `teardown`);
- `WorkloadRunner`: measures a whole workload itself and returns its metrics (`run_workload`).
"""

from __future__ import annotations

import resource
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

# The shared knob names live in runners.knobs; SHARED_DEFAULTS, SHARED_KNOBS and backend_of are
# re-exported here for the stages that name them from base.
from autotuner.runners.knobs import SERVING_KNOBS, Knob, declared, refusal
from autotuner.runners.knobs import SHARED_DEFAULTS as SHARED_DEFAULTS
from autotuner.runners.knobs import SHARED_KNOBS as SHARED_KNOBS
from autotuner.runners.knobs import backend_of as backend_of
from autotuner.runners.knobs import value as knob_value
from autotuner.spec.schema import Spec

# The one transfer policy of every GPU runner (TrialResult.info["transfer_policy"]): inputs are
# copied to the device once before timing, outputs are left on the device, and each timed step
# is synchronized, so that no latency includes host<->device copies, whatever the backend.
DEVICE_RESIDENT = "device-resident"


@dataclass(frozen=True)
class Device:
    """What one trial holds: a set of CPU cores, and a GPU when the config needs one."""

    kind: str  # "cpu" or "cuda"
    cores: tuple[int, ...]
    cuda_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        return cls(kind=d["kind"], cores=tuple(d["cores"]), cuda_index=d.get("cuda_index"))


class Runner(ABC):
    """What every runner declares. Subclass `TimedRunner` or `WorkloadRunner`, not this."""

    name: ClassVar[str]
    backends: ClassVar[tuple[str, ...]]
    # Every parameter this runner reads beyond the shared ones (runners.knobs.SHARED), each
    # declared once: default, choices, kind, where it applies, exclusivity (see Knob). A shared
    # knob listed here (precision: `precisions(...)`) takes this runner's declaration instead.
    knobs: ClassVar[dict[str, Knob]] = {}
    # Any parameter name, and any value of it (precision too), is passed to the program (the
    # command runner): the program, not autotune, knows what it accepts.
    open_knobs: ClassVar[bool] = False
    # The top-level spec section this runner owns (e.g. `command`), its model, and whether it
    # must be given (and only given) when the space searches one of the runner's backends.
    settings_key: ClassVar[str | None] = None
    Settings: ClassVar[type[BaseModel] | None] = None
    settings_required: ClassVar[bool] = False
    # Sections of other runners this one reads too (the vllm runner reads the llm's `workload`):
    # a section is ignored, and so refused, only when no backend of the space reads it.
    reads_sections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: Spec, config: dict[str, Any], device: Device) -> None:
        self.spec = spec
        self.config = config
        self.device = device
        self.settings: Any = self.section(spec)

    @classmethod
    def knob(cls, config: dict[str, Any], name: str) -> Any:
        """A knob's value in a config, or its default (the runner's, else the shared one)."""
        return knob_value(cls.knobs, config, name)

    @classmethod
    def declared(cls, name: str) -> Knob | None:
        """How this runner declares a knob (a shared one it leaves alone: the shared declaration)."""
        return declared(cls.knobs, name)

    @classmethod
    def section(cls, spec: Spec) -> Any:
        """This runner's section of the spec, validated (its defaults when the spec leaves it out)."""
        if cls.Settings is None or cls.settings_key is None:
            return None
        return cls.Settings.model_validate(spec.sections.get(cls.settings_key) or {})

    @classmethod
    def check_spec(cls, spec: Spec, settings: Any) -> None:
        """Checks of the spec that need this runner's settings; raise spec.FieldError (path from
        the spec's root). Called once when the spec is loaded."""

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        """Why this config cannot run here, or None. Milliseconds; must not load the model."""
        return common_check(cls, config, caps)

    @classmethod
    def predict_memory(
        cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]
    ) -> tuple[int, int] | None:
        """(predicted bytes, bytes the device has) for the predicted-oom check before launch, or
        None where this runner has no memory model (the default). Milliseconds; no model load."""
        return None

    @classmethod
    def needs_gpu(cls, config: dict[str, Any]) -> bool:
        """Whether this config holds a GPU (executors place it on one)."""
        return config.get("device") == "cuda"

    @classmethod
    def gpus(cls, spec: Spec, config: dict[str, Any]) -> int:
        """How many GPUs this config holds (executors ask for and hand it that many)."""
        return 1 if cls.needs_gpu(config) else 0

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        """What production needs to reproduce this config (goes into the best-config YAML)."""
        return {}

    def teardown(self) -> None:
        """Free what setup took."""


class TimedRunner(Runner):
    """Runs in the worker; the harness times the step `prepare` returns.

    Life cycle: `check` -> `setup` (load, export, quantize, compile) -> `prepare(batch)` ->
    step() timed -> `predict` for accuracy -> `teardown`.
    """

    @abstractmethod
    def setup(self) -> None: ...

    @abstractmethod
    def prepare(self, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        """Move a batch where the backend wants it; return a no-argument step that runs it once."""

    @abstractmethod
    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The first output for a batch, as float32 on the host."""

    def synchronize(self) -> None:
        """Wait for the device (GPU runners)."""

    def activate(self) -> None:
        """Apply process-wide settings (thread counts) before a measurement block."""

    def device_peak_memory_mb(self) -> float | None:
        """Peak device memory, or None on CPU (the worker's peak RSS is used then)."""
        return None

    @contextmanager
    def instance_stream(self) -> Iterator[None]:
        """Around one batch of a serving instance: the step runs inside it and is finished on the
        device when it exits. A GPU runner gives each instance a stream of its own (the default
        waits for the whole device with `synchronize`)."""
        yield
        self.synchronize()

    @property
    def transfer_policy(self) -> str | None:
        """How the timed step treats host<->device copies: DEVICE_RESIDENT on a GPU, None on CPU."""
        return None

    def trial_info(self) -> dict[str, Any]:
        """Facts about how this trial ran, kept with its result (TrialResult.info)."""
        return {"transfer_policy": self.transfer_policy} if self.transfer_policy else {}

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        """The shared checks, then which model sources this runner reads."""
        reason = common_check(cls, config, caps)
        if reason:
            return reason
        m = spec.model
        if m.external is not None:
            return "an external model runs only on the command backend"
        if m.hf is not None:
            return "a model.hf directory runs on the llm backend"
        return serving_check(cls, spec, config, caps)


class WorkloadRunner(Runner):
    """Measures a whole workload itself (an LLM serving run, an external benchmark program)."""

    # Set by the worker before run_workload: the telemetry of the trial's device (anything with
    # begin() and end()). The runner marks its timed part with `with self.timed():`.
    window: Any = None
    # Set by the worker too: a race or verify block's seconds; None for a search trial.
    block_s: float | None = None

    @abstractmethod
    def run_workload(self) -> dict[str, float]:
        """The metrics of one run."""

    def trial_info(self) -> dict[str, Any]:
        """Facts about how the run went, kept with its result (TrialResult.info)."""
        return {}

    @contextmanager
    def timed(self) -> Iterator[None]:
        """The part of the run that is measured: telemetry (power, energy, GPU use) covers it."""
        if self.window is not None:
            self.window.begin()
        try:
            yield
        finally:
            if self.window is not None:
                self.window.end()


def common_check(cls: type[Runner], config: dict[str, Any], caps: dict[str, Any]) -> str | None:
    """Checks every runner shares: the precision it offers, threads within the trial's cores, a
    positive batch, and every declared knob's value and where it applies (runners.knobs.refusal).
    A knob that another runner holds for itself is refused where runners are reasoned about
    together (runners.exclusive), not here: a runner's check loads no other runner."""
    if cls.open_knobs:  # a program reads its own values
        names: list[str] = []
    else:
        names = [k for k in cls.knobs if k != "precision"]
        reason = refusal(cls.knobs, config, cls.name, ["precision"])
        if reason:
            return reason
    cores = int(caps.get("cpu_cores", 1))
    threads = config.get("threads")
    if threads is not None and int(threads) > cores:
        return f"threads={threads} exceeds the {cores} CPU cores a trial gets here"
    if threads is not None and int(threads) < 1:
        return "threads must be at least 1"
    if int(cls.knob(config, "batch_size")) < 1:
        return "batch_size must be at least 1"
    return refusal(cls.knobs, config, cls.name, names) if names else None


def serving_check(cls: type[Runner], spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
    """The serving knobs of a config: one core at least per instance, no batching wait for a
    batch of one. (A space that sets them outside the serving scenario is a spec error.)"""
    if spec.scenario != "serving":
        given = [k for k in SERVING_KNOBS if k in config]
        return f"{given[0]} applies to scenario serving" if given else None
    max_batch = int(cls.knob(config, "max_batch_size"))
    if max_batch < 1:
        return "max_batch_size must be at least 1"
    timeout = float(cls.knob(config, "batch_timeout_ms"))
    if timeout < 0:
        return "batch_timeout_ms must be at least 0"
    if max_batch == 1 and timeout > 0:
        return "batch_timeout_ms applies when max_batch_size is above 1 (a batch of one never waits)"
    instances = int(cls.knob(config, "instances"))
    cores = int(config.get("threads") or caps.get("cpu_cores", 1))
    if instances < 1:
        return "instances must be at least 1"
    if instances > cores:
        return f"instances={instances} needs a core each; the trial holds {cores}"
    return None


def host_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
