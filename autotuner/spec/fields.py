"""The error a spec validator raises to point below the field it validates."""

from __future__ import annotations


class FieldError(ValueError):
    """A problem at a field below the one being validated; `path` is relative to it.

    A validator raises FieldError(("low",), "...") and load_spec reports the error at
    pydantic's location plus this path, e.g. `space.batch_size.low` rather than `space.batch_size`.
    """

    def __init__(self, path: str | int | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path: tuple[str | int, ...] = path if isinstance(path, tuple) else (path,)
