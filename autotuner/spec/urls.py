"""Storage URLs as they may be shown or kept: with any password hidden."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable storage URL>"
