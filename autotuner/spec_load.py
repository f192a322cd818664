"""Reading a spec file: YAML to a validated Spec, with one-line errors naming the field path."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from autotuner.errors import SpecError
from autotuner.spec import Spec

_UNION_TAGS = {"int", "float", "str", "bool", "list", "dict", "none"}


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    """Read and validate SPEC.yaml. Raises SpecError (exit status 2) with one clear line."""
    p = Path(path)
    shown = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(shown, "", "no such file") from None
    except IsADirectoryError:
        raise SpecError(shown, "", "is a directory, not a spec file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(shown, "", f"cannot be read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(shown, "", f"{where}not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SpecError(shown, "", f"must be a mapping of fields (name, model, space, ...), got {kind}")
    data = dict(data)
    data.update(overrides or {})
    data["base_dir"] = str(p.resolve().parent)
    return spec_from_dict(data, shown)


def spec_from_dict(data: dict[str, Any], source: str = "<spec>") -> Spec:
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        raise SpecError(source, _path(err["loc"]), _problem(err)) from None


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """A plain dict that crosses a process boundary and validates back to the same Spec."""
    return {**spec.model_dump(mode="json"), "base_dir": spec.base_dir}


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or str(part) in _UNION_TAGS:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem(err: dict[str, Any]) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        allowed = _allowed_fields(err["loc"][:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown field{hint}"
    if kind == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind in ("model_type", "dict_type"):
        return f"{msg} (got {type(err.get('input')).__name__})"
    return msg


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that sits at loc, for 'unknown field' messages."""
    current: Any = Spec
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) in (dict, list):
            current = typing.get_args(current)[-1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [n for n, f in current.model_fields.items() if not f.exclude]
    return []


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp
