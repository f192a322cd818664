"""Command runner: any external benchmark (vLLM, TensorRT-LLM, trtexec, a team's script).

The spec's `command.argv` is a list; `{param}` placeholders are filled with the trial's values as
plain text and the list is executed directly, never through a shell, so a value holding shell
metacharacters reaches the program literally. Metrics are read from a JSON file the command
writes (`metrics_file`) or from the last JSON object on its stdout, by dotted paths. A metric may be
a built-in one or one the spec declares under `metrics:` (the program's own figure, e.g. `mfu`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from autotuner.errors import AutotuneError
from autotuner.runners.base import WorkloadRunner
from autotuner.spec.schema import FieldError, Spec, known_metric


class CommandFailed(AutotuneError):
    pass


PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
COMMAND_EXTRAS = ("model", "trial_dir")


def placeholders(template: str) -> list[str]:
    """The {names} in a template; '{{' and '}}' are literal braces."""
    return [m[1] for m in PLACEHOLDER_RE.finditer(template) if m[1] is not None]


def render(template: str, values: dict[str, Any]) -> str:
    """Fill {names} with values, as text: no shell, no format-spec mini-language."""

    def one(m: re.Match[str]) -> str:
        if m[0] in ("{{", "}}"):
            return m[0][0]
        return str(values[m[1]])

    return PLACEHOLDER_RE.sub(one, template)


class CommandResources(BaseModel):
    """What one trial of the program holds: `gpus` GPUs (0: none; N > 1: a tensor-parallel
    trial). Executors ask for that many and show the program only those (CUDA_VISIBLE_DEVICES)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: StrictInt = Field(default=0, ge=0)


class CommandSettings(BaseModel):
    """The spec's `command` section: the argv template (a list, never a shell string), its
    environment and folder, the resources a trial holds, and where each metric is read from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    metrics_file: str | None = None
    resources: CommandResources = Field(default_factory=CommandResources)
    # Our metric name (built-in or declared in the spec's `metrics:`) -> dotted path in the JSON
    # (a file the command writes, else its stdout). The names are checked by `bind`.
    metrics: dict[str, str] = Field(min_length=1)

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, v: dict[str, str]) -> dict[str, str]:
        aggregates = ("min", "max", "count", "mean", "median", "p90", "p95", "p99")
        for name, path in v.items():
            agg, sep, rest = path.partition(":")
            if sep and agg not in aggregates:
                raise FieldError(name, f"{agg!r} is not an aggregate; allowed: {', '.join(aggregates)}")
            dotted = rest if sep else path
            if not dotted or any(not part for part in dotted.split(".")):
                raise FieldError(name, f"{path!r} is not a dotted path like 'results.throughput'")
        return v


class CommandRunner(WorkloadRunner):
    name = "command"
    backends = ("command",)
    # Every parameter, and any value of it, is passed to the program (precision too: trtexec's
    # "best"), so no knob is declared and the base checks none.
    open_knobs = True
    settings_key = "command"
    Settings = CommandSettings
    settings_required = True
    settings: CommandSettings

    @classmethod
    def check_spec(cls, spec: Spec, settings: CommandSettings) -> None:
        """Every {placeholder} names a parameter (or model, trial_dir); every metric read is a
        built-in or declared one, and every declared one is read."""
        for name in settings.metrics:
            try:
                known_metric(name, spec.metrics)
            except ValueError as e:
                raise FieldError(("command", "metrics", name), str(e)) from None
        for name in spec.metrics:
            if name not in settings.metrics:
                raise FieldError(
                    ("metrics", name),
                    "declared, but command.metrics does not read it; give its JSON path there",
                )
        known = set(spec.space) | set(COMMAND_EXTRAS)
        texts: list[tuple[str, str | int | None, str]] = [("argv", i, a) for i, a in enumerate(settings.argv)]
        texts += [("env", k, v) for k, v in settings.env.items()]
        if settings.metrics_file:
            texts.append(("metrics_file", None, settings.metrics_file))
        for field, key, text in texts:
            for name in placeholders(text):
                if name not in known:
                    where = ("command", field) if key is None else ("command", field, key)
                    raise FieldError(
                        where, f"{{{name}}} is not a parameter; allowed: {', '.join(sorted(known))}"
                    )

    @classmethod
    def gpus(cls, spec: Spec, config: dict[str, Any]) -> int:
        """The spec's command.resources.gpus: a program's GPUs are declared, not guessed."""
        if "command" not in spec.sections:
            return 0
        return cls.section(spec).resources.gpus

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        if "command" not in spec.sections:
            return "backend command needs the spec's command section"
        program = render(cls.section(spec).argv[0], _values(spec, config, "."))
        if os.sep not in program and shutil.which(program) is None:
            return f"program {program!r} is not on PATH here"
        return None

    def run_workload(self) -> dict[str, float]:
        cmd = self.settings
        # Inside the worker's trial folder when there is one: a killed trial leaves nothing
        # behind that the next run does not sweep (autotuner.execution.process).
        scratch = os.environ.get("AUTOTUNE_TRIAL_DIR") or None
        trial_dir = Path(tempfile.mkdtemp(prefix="autotune-command-", dir=scratch))
        try:
            values = _values(self.spec, self.config, str(trial_dir))
            argv = [render(a, values) for a in cmd.argv]
            env = {**os.environ, **{k: render(v, values) for k, v in cmd.env.items()}}
            cwd = self.spec.resolve(render(cmd.cwd, values)) if cmd.cwd else Path(self.spec.base_dir)
            timeout = cmd.timeout_s or self.spec.measurement.trial_timeout_s * 0.9
            proc = subprocess.run(
                argv,
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if proc.returncode != 0:
                tail = " | ".join(proc.stderr.strip().splitlines()[-5:])[-600:] or "(no stderr)"
                raise CommandFailed(f"{argv[0]} exited {proc.returncode}: {tail}")
            if cmd.metrics_file:
                path = Path(render(cmd.metrics_file, values))
                path = path if path.is_absolute() else cwd / path
                try:
                    data = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    raise CommandFailed(f"cannot read the metrics file {path}: {e}") from None
            else:
                data = last_json(proc.stdout)
            return {name: lookup(data, dotted) for name, dotted in cmd.metrics.items()}
        finally:
            shutil.rmtree(trial_dir, ignore_errors=True)

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"command": {k: v for k, v in config.items() if k != "backend"}}


def _values(spec: Spec, config: dict[str, Any], trial_dir: str) -> dict[str, Any]:
    return {**config, "model": spec.model.external or "", "trial_dir": trial_dir}


def last_json(stdout: str) -> Any:
    """The last line of stdout that parses as a JSON object, or the whole stdout."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        raise CommandFailed("the command printed no JSON object and no metrics_file was given") from None


AGGREGATES = {
    "min": min,
    "max": max,
    "count": len,
    "mean": lambda xs: sum(xs) / len(xs),
    "median": lambda xs: float(np.median(xs)),
    "p90": lambda xs: float(np.percentile(xs, 90)),
    "p95": lambda xs: float(np.percentile(xs, 95)),
    "p99": lambda xs: float(np.percentile(xs, 99)),
}


def lookup(data: Any, dotted: str) -> float:
    """A number from JSON by dotted path: 'a.b.0' is data['a']['b'][0].

    'AGG:path' with '*' segments reduces many numbers, e.g. 'median:*.latencyMs' over trtexec's
    per-inference times (AGG: min, max, mean, median, p90, p95, p99, count). NaN where the path
    does not lead to a number.
    """
    agg, sep, path = dotted.partition(":")
    if not sep:
        agg, path = "", dotted
    nodes = [data]
    for part in path.split("."):
        nxt: list[Any] = []
        for node in nodes:
            if part == "*":
                nxt.extend(
                    node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
                )
            elif isinstance(node, dict) and part in node:
                nxt.append(node[part])
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                nxt.append(node[int(part)])
        nodes = nxt
    numbers = [float(n) for n in nodes if isinstance(n, int | float) and not isinstance(n, bool)]
    if agg == "count":
        return float(len(nodes))
    if agg:
        return float(AGGREGATES[agg](numbers)) if numbers else math.nan
    return numbers[0] if len(numbers) == 1 and len(nodes) == 1 else math.nan
