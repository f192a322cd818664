"""Request trace files: one JSON object a line (`{"prompt_len", "output_len", "arrival_s"}`), the
format the llm runner's `workload.trace` and the serving scenario's `serving.trace` share."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


class TraceError(ValueError):
    """A trace that cannot be read or holds a malformed line; the message names the file (and line)."""


def read_trace(path: Path, required: Sequence[str] = ()) -> list[dict]:
    """The trace's rows. Each row is a JSON object with integer `required` fields and, where given,
    `arrival_s`: seconds from the start, a number of at least 0. Raises TraceError."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path} is not a text file") from None
    expected = f"JSON with {' and '.join(required)}" if required else "a JSON object with arrival_s"
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            for key in required:
                int(row[key])
            arrival = row.get("arrival_s", 0.0)
            if isinstance(arrival, bool) or not isinstance(arrival, int | float):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise TraceError(f"{path} line {i}: expected {expected}") from None
        if not (math.isfinite(arrival) and arrival >= 0):
            raise TraceError(f"{path} line {i}: arrival_s must be a number of at least 0, got {arrival!r}")
        rows.append(row)
    if not rows:
        raise TraceError(f"{path} holds no request")
    return rows
