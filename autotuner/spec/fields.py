"""The error a spec validator raises to point below the field it validates."""

from __future__ import annotations

import re

FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def function_path(v: str | None) -> str | None:
    """A 'package.module:function' field (a model or data factory, a task metric), checked."""
    if v is not None and not FACTORY_RE.match(v):
        raise ValueError(f"{v!r} must look like 'package.module:function'")
    return v


class FieldError(ValueError):
    """A problem at a field below the one being validated; `path` is relative to it.

    A validator raises FieldError(("low",), "...") and load_spec reports the error at
    pydantic's location plus this path, e.g. `space.batch_size.low` rather than `space.batch_size`.
    """

    def __init__(self, path: str | int | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path: tuple[str | int, ...] = path if isinstance(path, tuple) else (path,)
