"""Knobs: the parameters a runner reads from a config, each declared once.

A runner declares `knobs: dict[str, Knob]`; the base refuses, from that declaration alone, a value
of the wrong kind, a value outside a closed set and a knob given where it does not apply
(`refusal`), and the spec binding reads the same declaration to refuse values no runner of a
space offers. The shared knobs (backend, batch_size, precision, threads) and the serving ones
are declared here too. A leaf: it imports no other runners module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autotuner.spec.schema import DEFAULT_BACKEND

_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a name"}


@dataclass(frozen=True)
class Knob:
    """One parameter a runner reads.

    - `default`: the value a config that leaves the knob out has.
    - `choices`: the closed set of values it takes (True is not 1); None: any value.
    - `kind`: bool, int, float or str; a value of another type is refused (bool: choices
      True and False unless given).
    - `applies_to`: {other knob: its values} where this knob applies, e.g. {"backend":
      ("torch-compile",)}; elsewhere a value other than the default is refused with
      "{name} applies {where}" (`strict`: given at all, even the default), so that no config is
      measured twice under two names. `where` words the place ("to the TensorRT provider");
      by default it is said from `applies_to` ("to backend torch-compile").
    - `exclusive`: only this runner reads the knob, and the others refuse it, with these words
      ("{runner}" is the refusing runner), so a mixed space does not measure one config per value.
    - `calibrated`: values calibrated on the spec's data (precision int8): a space that searches
      one without a data section is a spec error.
    - `unknown`: the refusal of a value outside `choices` ({name}, {value}, {choices}, {runner}).
    """

    default: Any = None
    choices: tuple[Any, ...] | None = None
    kind: type | None = None
    applies_to: Mapping[str, tuple[Any, ...]] | None = None
    where: str | None = None
    strict: bool = False
    exclusive: str | None = None
    calibrated: tuple[Any, ...] = ()
    unknown: str = "{name} {value!r} is not one of {choices}"

    def __post_init__(self) -> None:
        if self.kind is bool and self.choices is None:
            object.__setattr__(self, "choices", (False, True))

    def applies_where(self) -> str:
        """The end of the refusal "{name} applies ..." for a config where it does not apply."""
        if self.where:
            return self.where
        parts = [f"{k} {' or '.join(map(str, v))}" for k, v in (self.applies_to or {}).items()]
        return "to " + " and ".join(parts)


def precisions(*offered: str, calibrated: tuple[str, ...] = ()) -> Knob:
    """The precision knob of a runner that offers these (the first offered is not the default:
    fp32 always is)."""
    return Knob(
        "fp32",
        choices=offered,
        calibrated=calibrated,
        unknown="{runner} runner does not offer precision {value!r} (offers {choices})",
    )


# Knobs every runner understands, with the value a config has when it leaves one out; a runner
# that declares one of them (its precisions, the llm's batch_size) overrides it.
SHARED: dict[str, Knob] = {
    "backend": Knob(DEFAULT_BACKEND),
    "batch_size": Knob(1),
    "precision": precisions("fp32"),
    "threads": Knob(None),  # None: every core the trial holds
}
SHARED_DEFAULTS: dict[str, Any] = {name: knob.default for name, knob in SHARED.items()}
SHARED_KNOBS = frozenset(SHARED)
# Knobs of the serving scenario (`scenario: serving`), read by the timed runners: the dynamic
# batcher's largest batch and how long it waits to fill one (0: it takes what is queued), and
# the model copies (instances), each on its own share of the trial's cores.
SERVING: dict[str, Knob] = {"max_batch_size": Knob(8), "batch_timeout_ms": Knob(0), "instances": Knob(1)}
SERVING_KNOBS: dict[str, Any] = {name: knob.default for name, knob in SERVING.items()}


def backend_of(config: dict[str, Any]) -> str:
    return str(config.get("backend", DEFAULT_BACKEND))


def declared(knobs: Mapping[str, Knob], name: str) -> Knob | None:
    """A knob as a runner with these declarations reads it: its own, else the shared one."""
    return knobs.get(name) or SHARED.get(name)


def value(knobs: Mapping[str, Knob], config: dict[str, Any], name: str) -> Any:
    """A knob's value in a config, or its default (the runner's, else the shared one)."""
    if name in config:
        return config[name]
    knob = declared(knobs, name)
    return knob.default if knob is not None else None


def same(a: Any, b: Any) -> bool:
    """Equal, and both booleans or neither (a YAML 1 is not true)."""
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


def refusal(
    knobs: Mapping[str, Knob], config: dict[str, Any], runner: str, names: Iterable[str] | None = None
) -> str | None:
    """Why a config's declared knobs (`names`, default all) cannot run on this runner, or None.

    In this order: a strict knob given where it does not apply (its value does not matter
    there); each value given against its kind and choices; any other knob whose value is not
    its default where it does not apply."""
    checked = [(n, k) for n in (list(knobs) if names is None else names) if (k := declared(knobs, n))]
    for name, knob in checked:
        if knob.strict and config.get(name) is not None and not _applies(knobs, config, knob):
            return f"{name} applies {knob.applies_where()}"
    for name, knob in checked:
        v = value(knobs, config, name)
        if (v is None and knob.default is None) or (name not in config and name != "precision"):
            continue  # a default is a value of its knob (precision: unless the runner lacks fp32)
        if knob.kind is not None and not _of_kind(v, knob.kind):
            return f"{name} must be {_KINDS.get(knob.kind, knob.kind.__name__)}, not {v!r}"
        if knob.choices is not None and not any(same(v, c) for c in knob.choices):
            shown = ", ".join(map(str, knob.choices))
            return knob.unknown.format(name=name, value=v, choices=shown, runner=runner)
    for name, knob in checked:
        if not knob.strict and not _applies(knobs, config, knob):
            if not same(value(knobs, config, name), knob.default):
                return f"{name} applies {knob.applies_where()}"
    return None


def _applies(knobs: Mapping[str, Knob], config: dict[str, Any], knob: Knob) -> bool:
    """Whether a knob applies to this config (the other knobs' values, defaults included)."""
    return all(value(knobs, config, k) in vs for k, vs in (knob.applies_to or {}).items())


def _of_kind(v: Any, kind: type) -> bool:
    return isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
