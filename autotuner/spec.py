"""The spec: one validated object built from the YAML file. Nothing later re-parses YAML."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autotuner.metrics import METRICS

Scalar = bool | int | float | str
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
CONSTRAINT_RE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")
DTYPES = ("float32", "float16", "int64", "int32", "bool")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    builtin: str | None = None
    factory: str | None = None
    onnx: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [k for k in ("builtin", "factory", "onnx") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of builtin, factory, onnx (got {', '.join(given) or 'none'})")
        if self.factory is not None and not FACTORY_RE.match(self.factory):
            raise ValueError(f"factory {self.factory!r} must look like 'package.module:function'")
        if self.onnx is not None and not self.onnx.endswith(".onnx"):
            raise ValueError(f"onnx {self.onnx!r} must be a path to a .onnx file")
        return self

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, v: str | None) -> str | None:
        from autotuner.models import BUILTINS

        if v is not None and v not in BUILTINS:
            raise ValueError(f"unknown builtin {v!r}; allowed: {', '.join(sorted(BUILTINS))}")
        return v


class InputSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    shape: list[int | Literal["batch"]]
    dtype: Literal["float32", "float16", "int64", "int32", "bool"] = "float32"
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.shape.count("batch") != 1:
            raise ValueError("shape must hold the word 'batch' exactly once, e.g. [batch, 128]")
        if any(isinstance(d, int) and d < 1 for d in self.shape):
            raise ValueError("every fixed dimension of shape must be a positive integer")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ParamSpec(_Strict):
    type: Literal["categorical", "int", "float", "fixed"]
    choices: list[Scalar] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    value: Scalar | None = None
    when: dict[str, list[Scalar]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, list):
            return {"type": "categorical", "choices": data}
        if isinstance(data, bool | int | float | str):
            return {"type": "fixed", "value": data}
        if isinstance(data, dict) and "type" not in data:
            data = dict(data)
            if "choices" in data:
                data["type"] = "categorical"
            elif "value" in data:
                data["type"] = "fixed"
            elif "low" in data or "high" in data:
                ints = all(isinstance(data.get(k), int) for k in ("low", "high"))
                data["type"] = "int" if ints else "float"
        return data

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        t = self.type
        allowed = {
            "categorical": {"choices"},
            "int": {"low", "high", "step", "log"},
            "float": {"low", "high", "step", "log"},
            "fixed": {"value"},
        }[t]
        for key in ("choices", "low", "high", "step", "value"):
            if getattr(self, key) is not None and key not in allowed:
                raise ValueError(f"'{key}' does not apply to a {t} parameter")
        if self.log and t not in ("int", "float"):
            raise ValueError(f"'log' does not apply to a {t} parameter")
        if t == "categorical":
            if not self.choices:
                raise ValueError("choices must list at least one value")
            if len({json.dumps(c) for c in self.choices}) != len(self.choices):
                raise ValueError("choices must not repeat a value")
        elif t == "fixed":
            if self.value is None:
                raise ValueError("a fixed parameter needs a value")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"an {t} range needs both low and high")
            if t == "int" and not all(float(v).is_integer() for v in (self.low, self.high)):
                raise ValueError("an int range needs integer low and high")
            if self.low > self.high:
                raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low > 0")
            if self.step is not None:
                if self.step <= 0:
                    raise ValueError("step must be positive")
                if self.log:
                    raise ValueError("step and log cannot be combined")
                if t == "int" and not float(self.step).is_integer():
                    raise ValueError("an int range needs an integer step")
        return self

    def values(self) -> list[Scalar] | None:
        """Every value the parameter can take, where that set is finite."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "fixed":
            return [self.value]  # type: ignore[list-item]
        if self.type == "int":
            step = int(self.step or 1)
            if self.log:
                return None
            return list(range(int(self.low), int(self.high) + 1, step))  # type: ignore[arg-type]
        return None


class Objective(_Strict):
    metric: str
    direction: Literal["minimize", "maximize"]

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known_metric(v)


class Constraint(_Strict):
    metric: str
    op: Literal["<=", ">=", "<", ">"]
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 is feasible."""
        return value - self.bound if self.op in ("<=", "<") else self.bound - value


class Budget(_Strict):
    trials: int = Field(default=20, ge=1, le=1_000_000)
    wall_time_s: float | None = Field(default=None, gt=0)


class SamplerSpec(_Strict):
    type: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    n_startup_trials: int = Field(default=8, ge=0)


class Measurement(_Strict):
    warmup_iters: int = Field(default=3, ge=0)
    min_iters: int = Field(default=10, ge=1)
    max_iters: int = Field(default=10_000, ge=1)
    min_time_s: float = Field(default=0.5, ge=0)
    max_time_s: float = Field(default=3.0, gt=0)
    cv_target: float = Field(default=0.10, gt=0)
    trial_timeout_s: float = Field(default=300.0, gt=0)
    keep_samples: int = Field(default=500, ge=0)

    @model_validator(mode="after")
    def _order(self) -> Measurement:
        if self.min_iters > self.max_iters:
            raise ValueError(f"min_iters ({self.min_iters}) exceeds max_iters ({self.max_iters})")
        if self.min_time_s > self.max_time_s:
            raise ValueError(f"min_time_s ({self.min_time_s:g}) exceeds max_time_s ({self.max_time_s:g})")
        return self


class AccuracySpec(_Strict):
    samples: int = Field(default=16, ge=1, le=4096)


class PickSpec(_Strict):
    top_k: int = Field(default=3, ge=1, le=20)
    rounds: int = Field(default=5, ge=0, le=50)
    confidence: Literal[0.9, 0.95, 0.99] = 0.95
    tie_break: str = "min:peak_memory_mb"
    round_time_s: float = Field(default=0.5, gt=0)

    @field_validator("tie_break")
    @classmethod
    def _rule(cls, v: str) -> str:
        return check_rule(v)


class Spec(_Strict):
    name: str
    model: ModelSpec
    inputs: list[InputSpec] | None = None
    space: dict[str, ParamSpec]
    objectives: list[Objective] = Field(min_length=1, max_length=4)
    constraints: list[Constraint] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    seed: int = Field(default=0, ge=0)
    measurement: Measurement = Field(default_factory=Measurement)
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec)
    pick: PickSpec = Field(default_factory=PickSpec)
    baseline: dict[str, Scalar] | None = None
    storage: str | None = None
    study: str | None = None
    # Where the spec came from; relative model paths resolve against it. Not a YAML field.
    base_dir: str = Field(default=".", exclude=True)

    @field_validator("name", "study")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a usable name; use letters, digits, '_', '-', '.' (up to 100)")
        return v

    @field_validator("constraints", mode="before")
    @classmethod
    def _parse_constraints(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                out.append(item)
                continue
            m = CONSTRAINT_RE.match(item)
            if not m:
                raise ValueError(
                    f"constraint {i} {item!r} must look like 'METRIC <= NUMBER' (operators: <=, >=, <, >)"
                )
            out.append({"metric": _known_metric(m[1]), "op": m[2], "bound": float(m[3])})
        return out

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        from autotuner.registry import all_backends, all_knobs

        if not space:
            raise ValueError("space must define at least one parameter")
        knobs = all_knobs()
        for name, p in space.items():
            if name not in knobs:
                raise ValueError(f"unknown parameter {name!r}; allowed: {', '.join(sorted(knobs))}")
            for dep, vals in (p.when or {}).items():
                if dep == name or dep not in space:
                    raise ValueError(f"{name}.when names {dep!r}, which is not another parameter")
                dep_vals = space[dep].values()
                if dep_vals is not None:
                    bad = [v for v in vals if v not in dep_vals]
                    if bad:
                        raise ValueError(
                            f"{name}.when: {dep} can never be {bad[0]!r}; "
                            f"its values: {', '.join(map(str, dep_vals))}"
                        )
        backends = all_backends()
        if "backend" in space:
            vals = space["backend"].values()
            if vals is None:
                raise ValueError("backend must be categorical or fixed")
            bad = [v for v in vals if v not in backends]
            if bad:
                raise ValueError(f"backend {bad[0]!r} is not known; allowed: {', '.join(sorted(backends))}")
        _check_acyclic(space)
        return space

    @model_validator(mode="after")
    def _whole(self) -> Spec:
        if self.inputs is None and self.model.builtin is None:
            raise ValueError("inputs: required when the model is a factory or an ONNX file")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("objectives: a metric is listed twice")
        if self.inputs is not None:
            in_names = [i.name for i in self.inputs]
            if len(set(in_names)) != len(in_names):
                raise ValueError("inputs: an input name is listed twice")
        if self.sampler.type == "grid":
            for name, p in self.space.items():
                if p.values() is None:
                    raise ValueError(
                        f"sampler.type: grid needs finite parameters, but space.{name} is a "
                        "continuous or log range; give choices or a step"
                    )
        if self.baseline is not None:
            for k in self.baseline:
                if k not in self.space:
                    raise ValueError(f"baseline: {k!r} is not a parameter of space")
        return self

    @property
    def study_name(self) -> str:
        return self.study or self.name

    def fingerprint(self) -> str:
        """A short hash of what the spec asks for, to notice a changed spec on resume."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p


def _known_metric(v: str) -> str:
    if v not in METRICS:
        raise ValueError(f"unknown metric {v!r}; allowed: {', '.join(METRICS)}")
    return v


def check_rule(v: str) -> str:
    """A pick rule 'min:METRIC' or 'max:METRIC'."""
    direction, _, metric = v.partition(":")
    if direction not in ("min", "max") or not metric:
        raise ValueError(f"rule {v!r} must look like 'min:METRIC' or 'max:METRIC'")
    _known_metric(metric)
    return v


def _check_acyclic(space: dict[str, ParamSpec]) -> None:
    seen: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        if seen.get(n) == 1:
            raise ValueError(f"conditions form a cycle: {' -> '.join([*trail, n])}")
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for dep in space[n].when or {}:
            visit(dep, [*trail, n])
        seen[n] = 2

    for n in space:
        visit(n, [])
