"""Binding a spec to the installed runners: what the pure schema cannot know.

- every parameter of the space is a knob of some runner (or the space searches the command
  runner, which passes any parameter to its program);
- every backend of the space belongs to an installed runner;
- every value of a knob is one that some runner of the space accepts (a precision one of them
  offers, a positive whole batch size and thread count, a value of a runner's closed set): a
  value no runner can ever run is a spec error, while a combination that one runner refuses
  stays a trial that is refused (PRUNED) when the search proposes it;
- the baseline is a point of the space;
- a built-in model name is one the package ships;
- every top-level section that is not a core field belongs to a runner (`Runner.settings_key`),
  validates against that runner's `Settings`, and passes the runner's own `bind` checks.

Errors are SpecErrors with the field path from the spec's root, like the schema's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotuner.models.builtins import BUILTINS
from autotuner.runners.base import TimedRunner
from autotuner.runners.knobs import SERVING_KNOBS, SHARED_KNOBS
from autotuner.runners.registry import all_backends, all_knobs, load, runners
from autotuner.spec.loading import field_error, validate
from autotuner.spec.schema import FieldError, ParamSpec, Spec
from autotuner.spec.trace import TraceError, read_trace

if TYPE_CHECKING:
    from autotuner.runners.base import Runner


def bind(spec: Spec, source: str = "<spec>") -> Spec:
    """The spec, checked against the runners; raises autotuner.errors.SpecError (exit status 2)."""
    try:
        _model(spec)
        table = all_backends()
        bad = [b for b in spec.backends if b not in table] if "backend" in spec.space else []
        searched = {table[b] for b in spec.backends if b in table}
        knobs = all_knobs()
        open_names = any(load(name).open_knobs for name in searched)
        for name in spec.space:
            if name not in knobs and not open_names:
                raise FieldError("space", f"unknown parameter {name!r}; allowed: {', '.join(sorted(knobs))}")
        if bad:
            raise FieldError(
                ("space", "backend"),
                f"{bad[0]!r} is not a known backend; allowed: {', '.join(sorted(table))}",
            )
        classes = [load(name) for name in sorted(searched)]
        for name, param in spec.space.items():
            _domain(name, param, classes)
        _scenario(spec, classes)
        _calibrated(spec, classes)
        _baseline(spec)
        owners = {cls.settings_key: cls for cls in runners().values() if cls.settings_key}
        for key in spec.sections:
            if key not in owners:
                allowed = [n for n, f in Spec.model_fields.items() if not f.exclude] + sorted(owners)
                raise FieldError(key, f"unknown field; allowed: {', '.join(allowed)}")
        for key, cls in owners.items():
            used = cls.name in searched
            given = key in spec.sections
            readers = [c for c in runners().values() if c.settings_key == key or key in c.reads_sections]
            if cls.settings_required and used and not given:
                backends = " or ".join(cls.backends)
                raise FieldError(key, f"required when space.backend includes {backends}")
            if (used or given) and cls.Settings is not None:
                # A section given is checked even where no backend reads it (as the schema did).
                settings = validate(cls.Settings, spec.sections.get(key) or {}, source, (key,))
                if used:
                    cls.check_spec(spec, settings)
            if given and not any(c.name in searched for c in readers):
                # Read by no backend of the space: silently ignoring what a user wrote is how
                # tuning results get misread.
                backends = " or ".join(b for c in readers for b in c.backends)
                raise FieldError(
                    key,
                    f"is read by the {backends} backend only; this spec searches "
                    f"{', '.join(spec.backends)} (remove the section or add a backend that reads it)",
                )
    except FieldError as e:
        raise field_error(source, e) from None
    return spec


# Knobs every runner reads as a whole number of at least one, and the most each can mean: a
# batch of 16.7 million items in one call, or more threads, instances or cores than any machine
# has, is a typo (a range up to 10**12 was one), refused before a study.
_COUNTS = {"batch_size": 1 << 24, "threads": 4096, "max_batch_size": 1 << 24, "instances": 1024}


def _scenario(spec: Spec, classes: list[type[Runner]]) -> None:
    """The serving scenario: its knobs only with it, timed runners only, a trace that parses."""

    space = spec.space
    if spec.scenario != "serving":
        for name in SERVING_KNOBS:
            if name in space:
                raise FieldError(("space", name), "applies to scenario: serving (with a serving section)")
        return
    untimed = [c.name for c in classes if not issubclass(c, TimedRunner)]
    if untimed:
        raise FieldError(
            "scenario",
            f"serving drives the timed runners (torch, onnxruntime); space.backend includes {untimed[0]}",
        )
    if "batch_size" in space:
        raise FieldError(
            ("space", "batch_size"), "the serving scenario batches requests itself: search max_batch_size"
        )
    timeouts = space["batch_timeout_ms"].values() if "batch_timeout_ms" in space else [0]
    p = space.get("batch_timeout_ms")
    if p is not None:
        low = (
            p.low if p.type in ("int", "float") else min((v for v in timeouts or [] if _is_num(v)), default=0)
        )
        bad = [v for v in timeouts or [] if not _is_num(v)]
        if bad or (low is not None and low < 0):
            shown = bad[0] if bad else low
            raise FieldError(
                ("space", "batch_timeout_ms"), f"{shown!r} is not a wait; give milliseconds of at least 0"
            )
    sizes = (
        space["max_batch_size"].values() if "max_batch_size" in space else [SERVING_KNOBS["max_batch_size"]]
    )
    if sizes == [1] and timeouts is not None and all(v != 0 for v in timeouts):
        raise FieldError(
            ("space", "batch_timeout_ms"),
            "applies when max_batch_size is above 1 (a batch of one never waits); "
            "give 0 or a larger max_batch_size",
        )
    if spec.serving is not None and spec.serving.trace is not None:
        try:
            read_trace(spec.resolve(spec.serving.trace))
        except TraceError as e:
            raise FieldError(("serving", "trace"), str(e)) from None


def _calibrated(spec: Spec, classes: list[type[Runner]]) -> None:
    """A calibrated precision (static int8) needs real inputs: the spec's data section."""
    if spec.data is not None or "precision" not in spec.space:
        return
    values = spec.space["precision"].values() or []
    for cls in classes:
        precision = cls.declared("precision")
        wanted = [p for p in (precision.calibrated if precision else ()) if p in values]
        if wanted:
            raise FieldError(
                ("space", "precision"),
                f"{wanted[0]} is static INT8, calibrated on real inputs, and this spec has no data "
                "section; give data: (file, factory or builtin: sentences), or search int8-dynamic, "
                "which needs none",
            )


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _domain(name: str, param: ParamSpec, classes: list[type[Runner]]) -> None:
    """Refuse values of a knob that no runner of the space accepts (each runner's declaration of
    it: runners.knobs.Knob). A knob one runner holds for itself (Knob.exclusive) is read by that
    runner only; the others refuse it trial by trial (runners.exclusive)."""
    readers = [c for c in classes if name in SHARED_KNOBS or name in c.knobs]
    if not readers or any(c.open_knobs for c in readers):
        return  # a program (the command runner's) reads it: its values are its own
    where: tuple[str, ...] = ("space", name)
    if name in _COUNTS:
        if param.type == "float":
            raise FieldError(where, "must be whole numbers: give an int range (integer low and high)")
        most = _COUNTS[name]
        if param.type == "int":
            if param.low is not None and param.low < 1:
                raise FieldError((*where, "low"), f"{param.low:g} is below 1; {name} is at least 1")
            if param.high is not None and param.high > most:
                high = int(param.high)
                raise FieldError((*where, "high"), f"{high:,} is above {most:,}, the most {name} may be")
            return
        for v in param.values() or []:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FieldError(where, f"{v!r} is not a valid {name}; use whole numbers of at least 1")
            if v > most:
                raise FieldError(where, f"{v} is above {most:,}, the most {name} may be")
        return
    declared = [c.declared(name) for c in readers]
    if not all(k is not None and k.choices is not None for k in declared):
        return  # some runner takes any value of it
    values: list[object] = [v for k in declared for v in k.choices or ()]  # type: ignore[union-attr]
    if name == "precision":
        values = sorted(set(values))  # type: ignore[type-var]
    allowed = sorted({_shown(v) for v in values})
    if param.type in ("int", "float"):
        raise FieldError(where, f"must list values, not a range; allowed: {', '.join(allowed)}")
    words = all(isinstance(v, str) for v in values)
    for v in param.values() or []:
        if words and not isinstance(v, str):
            raise FieldError(where, f"{v!r} is not a name; allowed: {', '.join(allowed)}")
        if not any(v == a and type(v) is type(a) for a in values):
            runners = " and ".join(sorted({c.name for c in readers}))
            raise FieldError(
                where,
                f"{v!r} is offered by no runner of the space ({runners}); allowed: {', '.join(allowed)}",
            )


def _shown(v: object) -> str:
    """A value as YAML writes it (true, not True)."""
    return str(v).lower() if isinstance(v, bool) else str(v)


def _baseline(spec: Spec) -> None:
    """Every baseline value is one the space can take (its key being a parameter is the schema's check)."""
    for name, v in (spec.baseline or {}).items():
        p = spec.space[name]
        values = p.values()
        if values is not None:
            if not any(v == x and isinstance(v, bool) == isinstance(x, bool) for x in values):
                shown = ", ".join(map(str, values))
                raise FieldError(
                    ("baseline", name), f"{v!r} is not a value of space.{name}; its values: {shown}"
                )
        elif isinstance(v, bool) or not isinstance(v, int | float) or not (p.low <= v <= p.high):  # type: ignore[operator]
            raise FieldError(("baseline", name), f"{v!r} is outside space.{name} ({p.low:g} to {p.high:g})")


def _model(spec: Spec) -> None:
    v = spec.model.builtin
    if v is not None and v not in BUILTINS:
        raise FieldError(
            ("model", "builtin"), f"unknown builtin {v!r}; allowed: {', '.join(sorted(BUILTINS))}"
        )
