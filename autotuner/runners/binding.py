"""Binding a spec to the installed runners: what the pure schema cannot know.

- every parameter of the space is a knob of some runner (or the space searches the command
  runner, which passes any parameter to its program);
- every backend of the space belongs to an installed runner;
- a built-in model name is one the package ships;
- every top-level section that is not a core field belongs to a runner (`Runner.settings_key`),
  validates against that runner's `Settings`, and passes the runner's own `bind` checks.

Errors are SpecErrors with the field path from the spec's root, like the schema's.
"""

from __future__ import annotations

from autotuner.spec.loading import field_error, validate
from autotuner.spec.schema import FieldError, Spec


def bind(spec: Spec, source: str = "<spec>") -> Spec:
    """The spec, checked against the runners; raises autotuner.errors.SpecError (exit status 2)."""
    from autotuner.runners.registry import all_backends, all_knobs, load, runners

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
        owners = {cls.settings_key: cls for cls in runners().values() if cls.settings_key}
        for key in spec.sections:
            if key not in owners:
                allowed = [n for n, f in Spec.model_fields.items() if not f.exclude] + sorted(owners)
                raise FieldError(key, f"unknown field; allowed: {', '.join(allowed)}")
        for key, cls in owners.items():
            used = cls.name in searched
            given = key in spec.sections
            if cls.settings_required and used and not given:
                backends = " or ".join(cls.backends)
                raise FieldError(key, f"required when space.backend includes {backends}")
            if cls.settings_required and given and not used:
                raise FieldError(key, f"applies only when space.backend includes {' or '.join(cls.backends)}")
            if (used or given) and cls.Settings is not None:
                # A section given is checked even where no backend reads it (as the schema did).
                settings = validate(cls.Settings, spec.sections.get(key) or {}, source, (key,))
                if used:
                    cls.bind(spec, settings)
    except FieldError as e:
        raise field_error(source, e) from None
    return spec


def _model(spec: Spec) -> None:
    from autotuner.models.builtins import BUILTINS

    v = spec.model.builtin
    if v is not None and v not in BUILTINS:
        raise FieldError(
            ("model", "builtin"), f"unknown builtin {v!r}; allowed: {', '.join(sorted(BUILTINS))}"
        )
