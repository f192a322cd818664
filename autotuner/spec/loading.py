"""Reading a spec file: YAML to a validated Spec, with one-line errors naming the field path."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from autotuner.errors import SpecError
from autotuner.spec.schema import FieldError, Spec, value_kind
from autotuner.spec.urls import redact

_UNION_TAGS = {"int", "float", "str", "bool", "list", "dict", "none"}
# A spec is a few kilobytes; a file a thousand times that is a mistake (a model or a data file
# named by accident), refused before it is read rather than after half a minute of parsing.
MAX_SPEC_BYTES = 1 << 20


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"key {key!r} is given twice")
        self.key, self.line, self.first_line = key, line, first_line


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML keeps the last one silently)
    and reads 1e-3 as a number, as YAML 1.2 does (PyYAML wants 1.0e-3)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges may be overridden by a key given here
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:
                continue  # an unhashable key; SafeLoader says so itself
            if seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, first[key] + 1)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    """Read and validate SPEC.yaml against the schema. Raises SpecError (exit status 2) with one
    clear line. What depends on the installed runners is checked by `runners.binding.bind`."""
    p = Path(path)
    shown = str(path)
    try:
        size = p.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(
                shown, "", f"is {size / 2**20:.1f} MiB; a spec file is at most {MAX_SPEC_BYTES >> 20} MiB"
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(shown, "", "no such file") from None
    except IsADirectoryError:
        raise SpecError(shown, "", "is a directory, not a spec file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(shown, "", f"cannot be read: {e}") from None
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass: plain data only
    except RecursionError:
        raise SpecError(shown, "", "nests lists and mappings too deeply to be a spec") from None
    except _DuplicateKey as e:
        raise SpecError(
            shown, "", f"line {e.line}: key {e.key!r} is given twice (first on line {e.first_line})"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(shown, "", f"{where}not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else value_kind(data)
        raise SpecError(shown, "", f"must be a mapping of fields (name, model, space, ...), got {kind}")
    data = dict(data)
    data.update(overrides or {})
    data["base_dir"] = str(p.resolve().parent)
    return parse_spec(data, shown)


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> Spec:
    """Plain data (as YAML gives it) validated against the schema."""
    try:
        return validate(Spec, data, source)
    except RecursionError:  # deep data that YAML could still read (or a caller's own dict)
        raise SpecError(source, "", "nests lists and mappings too deeply to be a spec") from None


M = typing.TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, source: str, prefix: tuple[str | int, ...] = ()) -> M:
    """data validated as `model`; the first problem as a SpecError naming the field path (under
    `prefix`, for a section of the spec that a runner declares)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        path = _path((*prefix, *err["loc"]))
        error = err.get("ctx", {}).get("error")
        if isinstance(error, FieldError):  # a validator pointing below its own field
            path = _join(path, error.path)
        raise SpecError(source, path, _problem(err, model)) from None


def field_error(source: str, error: FieldError) -> SpecError:
    """A FieldError raised outside pydantic (binding), its path from the spec's root."""
    return SpecError(source, _join("", error.path), str(error))


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """A plain dict that crosses a process boundary and validates back to the same Spec."""
    out = {**spec.model_dump(mode="json"), **spec.sections, "base_dir": spec.base_dir}
    for key in ("model_digest", "data_digest"):
        if getattr(spec, key) is not None:
            out[key] = getattr(spec, key)
    return out


def public_spec_dict(spec: Spec) -> dict[str, Any]:
    """spec_to_dict with the storage URL's password hidden: what is kept in a study, or handed to
    a worker, a child or a Ray task (they never open the database), carries no secret."""
    data = spec_to_dict(spec)
    if spec.storage:
        data["storage"] = redact(spec.storage)
    return data


def _path(loc: tuple[Any, ...]) -> str:
    """pydantic's location as a field path, leaving out the tags it adds for union members."""
    return _join(
        "", tuple(p for p in loc if isinstance(p, int) or not ("[" in str(p) or str(p) in _UNION_TAGS))
    )


def _join(path: str, parts: tuple[Any, ...]) -> str:
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _problem(err: dict[str, Any], root: type[BaseModel] = Spec) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        allowed = _allowed_fields(err["loc"][:-1], root)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown field{hint}"
    if kind == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind in ("model_type", "dict_type"):
        return f"must be a mapping, got {value_kind(err.get('input'))}"
    if kind == "list_type":
        return f"must be a list, got {value_kind(err.get('input'))}"
    return msg


def _allowed_fields(loc: tuple[Any, ...], root: type[BaseModel] = Spec) -> list[str]:
    """Field names of the model that sits at loc, for 'unknown field' messages."""
    current: Any = root
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
