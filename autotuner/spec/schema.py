"""The spec: one validated object built from the YAML file. Nothing later re-parses YAML."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autotuner.metrics import METRICS, NEEDS_COST, RESERVED_NAMES
from autotuner.metrics import names as metric_names
from autotuner.spec.data import DataSpec
from autotuner.spec.fields import FieldError, function_path
from autotuner.spec.serving import ServingSpec
from autotuner.spec.urls import redact


def value_kind(v: Any) -> str:
    """What a YAML value is, in words: 'a string', 'a list', 'nothing'."""
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list | tuple):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return f"a {type(v).__name__}"


def _scalar(v: Any) -> Any:
    if not isinstance(v, bool | int | float | str):
        raise ValueError(f"must be a single value (number, string or boolean), got {value_kind(v)}")
    return v


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"must be a number, got {value_kind(v)}")
    return v


Scalar = Annotated[bool | int | float | str, BeforeValidator(_scalar)]
Number = Annotated[float, BeforeValidator(_number)]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
CONSTRAINT_RE = re.compile(
    r"^\s*([A-Za-z0-9_]+)\s*(<=|>=|<|>)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*(\*\s*fp32\s*)?$"
)
# "accuracy_task >= 0.98 * fp32" reads the config's task score over fp32's on the same data.
RELATIVE = "_vs_fp32"
RELATIVE_METRICS = ("accuracy_task",)
INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DTYPES = ("float32", "float16", "int64", "int32", "bool")
# The backend a config runs on when the space has no `backend` parameter.
DEFAULT_BACKEND = "torch-eager"


def _a(word: str) -> str:
    """The word with its article: 'an int', 'a float'."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    builtin: str | None = None
    factory: str | None = None
    onnx: str | None = None
    # A model only an external command loads (a hub name or a path); {model} in its argv.
    external: str | None = None
    # A local Hugging Face causal-LM directory (the llm backend); read offline.
    hf: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # The seed of random weights, apart from the sampler's `seed`: a factory is called under
    # torch.manual_seed(seed), the built-in models draw their weights from it (their option
    # `seed`, where given, says the same). Changing the sampler's seed never changes the model.
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        sources = ("builtin", "factory", "onnx", "external", "hf")
        given = [k for k in sources if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(sources)} (got {', '.join(given) or 'none'})")
        return self

    _factory = field_validator("factory")(classmethod(lambda cls, v: function_path(v)))

    @field_validator("onnx")
    @classmethod
    def _onnx(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith(".onnx"):
            raise ValueError(f"{v!r} must be a path to a .onnx file")
        return v


class InputSpec(_Strict):
    name: str
    shape: list[int | Literal["batch"]]
    dtype: Literal["float32", "float16", "int64", "int32", "bool"] = "float32"
    low: Number | None = None
    high: Number | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not INPUT_NAME_RE.match(v):
            raise ValueError(f"{v!r} must start with a letter or '_' and hold only letters, digits and '_'")
        return v

    @field_validator("shape", mode="before")
    @classmethod
    def _shape(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v  # pydantic says it must be a list
        for i, d in enumerate(v):
            if d != "batch" and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
                raise FieldError(
                    i, f"{d!r} is not a dimension; use a positive integer or 'batch' (the only word allowed)"
                )
        if v.count("batch") != 1:
            raise ValueError("must hold the word 'batch' exactly once, e.g. [batch, 128]")
        return v

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise FieldError("low", f"{self.low:g} must be below high ({self.high:g})")
        return self


# An int range without log holds at most this many values: the grid, the covering design and the
# condition checks enumerate finite ranges, and a wider one cannot be searched as given.
MAX_RANGE_VALUES = 1_000_000


class ParamSpec(_Strict):
    type: Literal["categorical", "int", "float", "fixed"]
    choices: list[Scalar] | None = None
    low: Number | None = None
    high: Number | None = None
    step: Number | None = None
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
                raise FieldError(key, f"does not apply to {_a(t)} parameter")
        if self.log and t not in ("int", "float"):
            raise FieldError("log", f"does not apply to {_a(t)} parameter")
        if t == "categorical":
            if not self.choices:
                raise ValueError("choices must list at least one value")
            seen: set[str] = set()
            for c in self.choices:
                if json.dumps(c) in seen:
                    raise ValueError(f"choices must not repeat a value; {c!r} is listed twice")
                seen.add(json.dumps(c))
        elif t == "fixed":
            if self.value is None:
                raise ValueError("a fixed parameter needs a value")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{_a(t)} range needs both low and high")
            if t == "int":
                for key in ("low", "high"):
                    if not float(getattr(self, key)).is_integer():
                        raise FieldError(
                            key,
                            f"{getattr(self, key):g} is not an integer; an int range needs integer bounds",
                        )
            if self.low > self.high:
                raise FieldError("low", f"{self.low:g} exceeds high ({self.high:g})")
            if self.log and self.low <= 0:
                raise FieldError("low", f"must be above 0 in a log range, got {self.low:g}")
            if self.step is not None:
                if self.step <= 0:
                    raise FieldError("step", f"must be positive, got {self.step:g}")
                if self.log:
                    raise ValueError("step and log cannot be combined")
                if t == "int" and not float(self.step).is_integer():
                    raise FieldError(
                        "step", f"{self.step:g} is not an integer; an int range needs an integer step"
                    )
            if t == "int" and not self.log:
                count = (int(self.high) - int(self.low)) // int(self.step or 1) + 1  # type: ignore[arg-type]
                if count > MAX_RANGE_VALUES:
                    raise FieldError(
                        "high",
                        f"the range {int(self.low):,} to {int(self.high):,} holds {count:,} values; an int "
                        f"range holds at most {MAX_RANGE_VALUES:,} (give log: true, a larger step, or a "
                        "lower high)",
                    )
        return self

    def size(self) -> int | None:
        """How many values the parameter can take (without listing them), None if unbounded."""
        if self.type in ("categorical", "fixed"):
            return len(self.choices or []) if self.type == "categorical" else 1
        if self.type == "int" and not self.log:
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1  # type: ignore[arg-type]
        return None

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


class MetricSpec(_Strict):
    """A metric the spec declares beyond the built-in ones: a figure an external program reports
    (the command runner reads it by `command.metrics`), usable as an objective or constraint."""

    unit: str | None = None
    # The better direction: what an objective on this metric that gives no direction takes.
    direction: Literal["minimize", "maximize"] | None = None
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        return {} if data is None else data  # `mfu:` with nothing after it declares the name only


# An objective's and a constraint's metric is checked by Spec (built-in or declared there).
class Objective(_Strict):
    metric: str
    direction: Literal["minimize", "maximize"]


class Constraint(_Strict):
    metric: str
    op: Literal["<=", ">=", "<", ">"]
    bound: Number

    @property
    def text(self) -> str:
        if self.metric.endswith(RELATIVE):
            return f"{self.metric.removesuffix(RELATIVE)} {self.op} {self.bound:g} * fp32"
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 is feasible."""
        return value - self.bound if self.op in ("<=", "<") else self.bound - value


class Budget(_Strict):
    # Trials count measurements: refusals and pooled repeats are free (see driver).
    trials: int = Field(default=20, ge=1, le=1_000_000)
    wall_time_s: float | None = Field(default=None, gt=0)
    # Seconds spent in timed measurement by the search (setup excluded); the search stops there.
    measure_s: float | None = Field(default=None, gt=0)


class SamplerSpec(_Strict):
    type: Literal["tpe", "random", "grid", "nsga2", "gp"] = "tpe"
    n_startup_trials: int = Field(default=8, ge=0)
    # The last share of the trial budget measures unmeasured neighbours (one parameter one step
    # away) of the best configs so far, instead of asking the sampler: a local refinement that
    # finds the best's next-door configs a global sampler tends to leave out. 0 turns it off.
    refine_share: float = Field(default=0.25, ge=0, le=1)


class Measurement(_Strict):
    warmup_iters: int = Field(default=3, ge=0)
    min_iters: int = Field(default=10, ge=1)
    max_iters: int = Field(default=10_000, ge=1)
    min_time_s: float = Field(default=0.5, ge=0)
    max_time_s: float = Field(default=3.0, gt=0)
    cv_target: float = Field(default=0.10, gt=0)
    trial_timeout_s: float = Field(default=300.0, gt=0)
    keep_samples: int = Field(default=500, ge=0)
    # A block during which other processes took more than this many cores' worth of CPU on the
    # trial's cores is "under load": kept, left out of estimates, and measured again.
    max_foreign_load: float = Field(default=0.1, gt=0)
    load_repeats: int = Field(default=2, ge=0, le=10)
    # warm: each block is a fork of a zygote that imported torch once (local executor); fresh: a
    # new interpreter per block. Both give the block its own process, session and watchdog.
    workers: Literal["warm", "fresh"] = "warm"
    # A config never measured gets a first look of this many timed seconds (accuracy checked as
    # in any trial); one that may still win is then measured at full length. None: no first looks.
    first_look_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _order(self) -> Measurement:
        # Point at the field the user wrote: min_* if given, else the max_* that undercuts its default.
        for low, high in (("min_iters", "max_iters"), ("min_time_s", "max_time_s")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo > hi:
                if low in self.model_fields_set or high not in self.model_fields_set:
                    raise FieldError(low, f"{lo:g} exceeds {high} ({hi:g})")
                raise FieldError(high, f"{hi:g} is below {low} ({lo:g})")
        if self.first_look_s is not None and self.first_look_s >= self.min_time_s:
            raise FieldError(
                "first_look_s",
                f"{self.first_look_s:g} is not under min_time_s ({self.min_time_s:g}); a first look "
                "is shorter than a trial (e.g. a quarter of min_time_s)",
            )
        return self


class CostSpec(_Strict):
    """The machine's price, from which usd_per_million_items is computed for every trial."""

    usd_per_hour: Number

    @field_validator("usd_per_hour")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not (v > 0 and v != float("inf")):
            raise ValueError(f"must be a positive number of US dollars per hour, got {v:g}")
        return v


class AccuracySpec(_Strict):
    # Seeded random samples of the accuracy check when the spec has no `data` section.
    samples: int = Field(default=16, ge=1, le=4096)
    # A task score (accuracy_task): a function (outputs, evaluation set) -> float, applied to the
    # evaluation set of `data` for the config and for fp32.
    metric: str | None = None

    _metric = field_validator("metric")(classmethod(lambda cls, v: function_path(v)))


class PickSpec(_Strict):
    """Racing the contenders: interleaved rounds, one fresh worker process per block."""

    top_k: int = Field(default=3, ge=1, le=20)  # most contenders raced at once
    rounds: int = Field(default=3, ge=0, le=50)  # rounds every contender gets; 0: no racing
    max_rounds: int = Field(default=6, ge=1, le=100)
    time_s: float | None = Field(default=None, gt=0)  # wall-time budget of the race
    # Any level: the quantiles come from scipy.stats (search/stats.py), not a table.
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    # Two configs whose paired difference lies within this share of the leader are a tie.
    tie_tolerance: float = Field(default=0.02, ge=0, lt=1)
    # Applied in order, each only where it separates the tied configs beyond noise.
    tie_break: list[str] = Field(default_factory=lambda: ["min:peak_memory_mb", "min:latency_p95_ms"])
    round_time_s: float = Field(default=0.5, gt=0)

    @field_validator("tie_break", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        # One rule may be given as a string; its error then names the field itself.
        return [check_rule(v, check_metric=False)] if isinstance(v, str) else v

    @field_validator("tie_break")
    @classmethod
    def _rules(cls, v: list[str]) -> list[str]:
        # The form here; the metric by Spec, which knows the declared ones.
        for i, rule in enumerate(v):
            try:
                check_rule(rule, check_metric=False)
            except ValueError as e:
                raise FieldError(i, str(e)) from None
        return v

    @model_validator(mode="after")
    def _order(self) -> PickSpec:
        if self.rounds > self.max_rounds:
            raise FieldError("max_rounds", f"{self.max_rounds} is below rounds ({self.rounds})")
        return self


class Spec(_Strict):
    name: str
    model: ModelSpec
    inputs: list[InputSpec] | None = None
    space: dict[str, ParamSpec]
    # Metrics beyond the built-in ones (an external program's own figures); before the objectives,
    # whose validators read them.
    metrics: dict[str, MetricSpec] = Field(default_factory=dict)
    # Before the objectives too: a cost metric may be named only when the price is given.
    cost: CostSpec | None = None
    objectives: list[Objective]
    constraints: list[Constraint] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    # Fixes the sampler. Left out, each new study draws a fresh seed and records it, so that
    # reruns are independent. The model's inputs are seeded by `seed`, or 0 when it is left out.
    seed: int | None = Field(default=None, ge=0)
    measurement: Measurement = Field(default_factory=Measurement)
    # batch: back-to-back batches of batch_size; serving: arriving requests through a dynamic
    # batcher (max_batch_size, batch_timeout_ms, instances), loaded as the `serving` section says.
    scenario: Literal["batch", "serving"] = "batch"
    serving: ServingSpec | None = None
    # Real inputs: a calibration set (static int8) and an evaluation set (the accuracy check).
    data: DataSpec | None = None
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec)
    pick: PickSpec = Field(default_factory=PickSpec)
    baseline: dict[str, Scalar] | None = None
    storage: str | None = None
    study: str | None = None
    # Top-level sections that belong to runners (command, workload, ...): kept as given here and
    # checked by the runner that declares them when the spec is bound (autotuner.runners.binding).
    sections: dict[str, Any] = Field(default_factory=dict, exclude=True)
    # Where the spec came from; relative model paths resolve against it. Not a YAML field.
    base_dir: str = Field(default=".", exclude=True)
    # What the model computes and what the data holds, as hashes (models.identity), found once
    # by the process that starts the trials and handed to them: every cached artifact is keyed
    # on them. Not YAML fields; None until found.
    model_digest: str | None = Field(default=None, exclude=True)
    data_digest: str | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        core = set(cls.model_fields)
        extra = {k: v for k, v in data.items() if k not in core}
        if not extra:
            return data
        kept = {k: v for k, v in data.items() if k in core}
        return {**kept, "sections": {**(kept.get("sections") or {}), **extra}}

    @field_validator("name", "study")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a usable name; use letters, digits, '_', '-', '.' (up to 100)")
        return v

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, v: list[InputSpec] | None) -> list[InputSpec] | None:
        names = [i.name for i in v or []]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise FieldError((i, "name"), f"{name!r} is listed twice")
        return v

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, v: dict[str, MetricSpec]) -> dict[str, MetricSpec]:
        for name in v:
            if not METRIC_NAME_RE.match(name):
                raise FieldError(
                    name,
                    "is not a usable metric name; start with a letter or '_', then letters, digits, "
                    "'_' (up to 64)",
                )
            if name in METRICS:
                raise FieldError(name, "is a built-in metric; a declared metric needs a name of its own")
            if name in RESERVED_NAMES:
                raise FieldError(name, "is a name autotune stores apart from the metrics; choose another")
        return v

    @field_validator("objectives", mode="before")
    @classmethod
    def _direction_hints(cls, v: Any, info: ValidationInfo) -> Any:
        """An objective on a declared metric that gives no direction takes the declared one."""
        declared = info.data.get("metrics") or {}
        if not isinstance(v, list):
            return v
        out = []
        for o in v:
            given = isinstance(o, dict) and "direction" not in o and isinstance(o.get("metric"), str)
            hint = declared.get(o["metric"]) if given else None
            out.append({**o, "direction": hint.direction} if hint and hint.direction else o)
        return out

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[Objective], info: ValidationInfo) -> list[Objective]:
        declared = info.data.get("metrics") or {}
        for i, o in enumerate(v):
            try:
                known_metric(o.metric, declared)
                _priced(o.metric, info)
            except ValueError as e:
                raise FieldError((i, "metric"), str(e)) from None
        if not v:
            raise ValueError("list at least one objective (at most 4)")
        if len(v) > 4:
            raise ValueError(f"list at most 4 objectives, got {len(v)}")
        metrics = [o.metric for o in v]
        for i, metric in enumerate(metrics):
            if metric in metrics[:i]:
                raise FieldError((i, "metric"), f"{metric!r} is listed twice")
        return v

    @field_validator("constraints", mode="before")
    @classmethod
    def _parse_constraints(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                out.append(item)
                continue
            m = CONSTRAINT_RE.match(item)
            if not m:
                raise FieldError(
                    i,
                    f"{item!r} must look like 'METRIC <= NUMBER' (operators: <=, >=, <, >) "
                    "or 'accuracy_task >= NUMBER * fp32'",
                )
            if m[4] and m[1] not in RELATIVE_METRICS:
                raise FieldError(
                    i,
                    f"{item!r}: a bound relative to fp32 applies to {', '.join(RELATIVE_METRICS)} "
                    "(fp32 scores the same data itself)",
                )
            try:
                metric = _priced(known_metric(m[1], info.data.get("metrics") or {}), info)
            except ValueError as e:
                raise FieldError(i, str(e)) from None
            metric = metric + RELATIVE if m[4] else metric
            out.append({"metric": metric, "op": m[2], "bound": float(m[3])})
        return out

    @field_validator("constraints")
    @classmethod
    def _constraint_metrics(cls, v: list[Constraint], info: ValidationInfo) -> list[Constraint]:
        for i, c in enumerate(v):
            try:
                _priced(known_metric(c.metric, info.data.get("metrics") or {}), info)
            except ValueError as e:
                raise FieldError((i, "metric"), str(e)) from None
        return v

    @field_validator("pick", mode="before")
    @classmethod
    def _pick_metrics(cls, v: Any, info: ValidationInfo) -> Any:
        """The tie-break rules name built-in or declared metrics (PickSpec checks their form)."""
        rules = v.get("tie_break") if isinstance(v, dict) else None
        declared = info.data.get("metrics") or {}
        if isinstance(rules, str):
            try:
                _priced(check_rule(rules, declared).partition(":")[2], info)
            except ValueError as e:
                raise FieldError("tie_break", str(e)) from None
        elif isinstance(rules, list):
            for i, rule in enumerate(rules):
                if isinstance(rule, str):
                    try:
                        _priced(check_rule(rule, declared).partition(":")[2], info)
                    except ValueError as e:
                        raise FieldError(("tie_break", i), str(e)) from None
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not space:
            raise ValueError("must define at least one parameter")
        for name, p in space.items():
            for dep, vals in (p.when or {}).items():
                if dep == name:
                    raise FieldError(
                        (name, "when"), f"names {dep!r} itself; a condition must name another parameter"
                    )
                if dep not in space:
                    others = ", ".join(n for n in space if n != name)
                    raise FieldError(
                        (name, "when"), f"names {dep!r}, which is not another parameter; allowed: {others}"
                    )
                dep_vals = space[dep].values()
                if dep_vals is not None:
                    bad = [v for v in vals if v not in dep_vals]
                    if bad:
                        shown = ", ".join(map(str, dep_vals))
                        raise FieldError(
                            (name, "when", dep), f"{bad[0]!r} is never a value of {dep}; its values: {shown}"
                        )
        if "backend" in space:
            b = space["backend"]
            if b.type not in ("categorical", "fixed"):
                raise FieldError("backend", f"must be categorical or fixed, not {_a(b.type)} range")
        _check_acyclic(space)
        return space

    @model_validator(mode="after")
    def _whole(self) -> Spec:
        if self.inputs is None and (self.model.factory or self.model.onnx):
            raise FieldError("inputs", "required when the model is a factory or an ONNX file")
        if self.sampler.type == "grid":
            for name, p in self.space.items():
                if p.values() is None:
                    raise FieldError(
                        ("sampler", "type"),
                        f"grid needs finite parameters, but space.{name} is a "
                        "continuous or log range; give choices or a step",
                    )
        if self.scenario == "serving" and self.serving is None:
            raise FieldError(
                "serving", "required when scenario is serving: give the load (rate_rps, trace or concurrency)"
            )
        if self.scenario != "serving" and self.serving is not None:
            raise FieldError("serving", "applies only with scenario: serving")
        self._task_metric()
        for k in self.baseline or {}:
            if k not in self.space:
                raise FieldError(
                    ("baseline", k), f"not a parameter of space; allowed: {', '.join(self.space)}"
                )
        return self

    def _task_metric(self) -> None:
        """accuracy.metric scores the data's evaluation set; accuracy_task needs both."""
        if self.accuracy.metric is not None and self.data is None:
            raise FieldError(
                ("accuracy", "metric"),
                "scores the evaluation set of the data section, which this spec does not have; "
                "give data: (file, factory or builtin)",
            )
        named = [
            *((("objectives", i, "metric"), o.metric) for i, o in enumerate(self.objectives)),
            *((("constraints", i), c.metric) for i, c in enumerate(self.constraints)),
        ]
        for where, metric in named:
            if metric.startswith("accuracy_task") and self.accuracy.metric is None:
                raise FieldError(
                    where,
                    f"{metric.removesuffix(RELATIVE)} is the score of accuracy.metric, which this spec "
                    "does not give",
                )

    @property
    def model_seed(self) -> int:
        """The seed of the model's random weights: a builtin's option `seed`, else model.seed."""
        return int(self.model.options.get("seed", self.model.seed))

    @property
    def data_seed(self) -> int:
        """The seed of the model inputs and accuracy samples (stable when the sampler's is not)."""
        return self.seed if self.seed is not None else 0

    @property
    def study_name(self) -> str:
        return self.study or self.name

    @property
    def backends(self) -> list[str]:
        """The backends the space searches (the default one when it names none)."""
        if "backend" not in self.space:
            return [DEFAULT_BACKEND]
        return [str(v) for v in self.space["backend"].values() or []]

    @property
    def declared_metrics(self) -> dict[str, dict[str, Any]]:
        """The `metrics:` section as plain data (autotuner.metrics' helpers take it)."""
        return {k: m.model_dump(exclude_none=True) for k, m in self.metrics.items()}

    def fingerprint(self) -> str:
        """A short hash of what the spec asks for, to notice a changed spec on resume."""
        data = self.model_dump(mode="json")
        if not data["metrics"]:
            del data["metrics"]  # as before the field existed: older studies resume unchanged
        if data["cost"] is None:
            del data["cost"]  # likewise
        if data["scenario"] == "batch" and data["serving"] is None:
            del data["scenario"], data["serving"]  # likewise
        if data["data"] is None:
            del data["data"]  # likewise
        if data["accuracy"].get("metric") is None:
            data["accuracy"].pop("metric", None)  # likewise
        if data["model"].get("seed") == 0:
            del data["model"]["seed"]  # likewise
        if data["storage"]:
            # A short hash of a known spec would let anyone holding the study try passwords offline.
            data["storage"] = redact(data["storage"])
        blob = json.dumps({**data, **self.sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p


def config_key(config: dict[str, Any]) -> str:
    """A config's identity (a point of the space): its JSON with sorted keys."""
    return json.dumps(config, sort_keys=True)


def known_metric(v: str, declared: Iterable[str] = ()) -> str:
    """The metric name, built-in or among `declared` (the spec's `metrics:`), or ValueError naming
    the allowed ones."""
    allowed = metric_names(declared)
    if v not in allowed:
        raise ValueError(f"unknown metric {v!r}; allowed: {', '.join(allowed)}")
    return v


def _priced(metric: str, info: ValidationInfo) -> str:
    """The metric, or ValueError when it is computed from a price the spec does not give (a cost
    that failed its own validation is not in info.data and is reported by itself)."""
    if metric in NEEDS_COST and "cost" in info.data and info.data["cost"] is None:
        raise ValueError(
            f"{metric} is computed from the machine's price; give it as cost: {{usd_per_hour: NUMBER}}"
        )
    return metric


def check_rule(v: str, declared: Iterable[str] = (), *, check_metric: bool = True) -> str:
    """A pick rule 'min:METRIC' or 'max:METRIC' on a built-in or declared metric (its form only,
    without check_metric)."""
    direction, _, metric = v.partition(":")
    if direction not in ("min", "max") or not metric:
        raise ValueError(f"rule {v!r} must look like 'min:METRIC' or 'max:METRIC'")
    if check_metric:
        known_metric(metric, declared)
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
