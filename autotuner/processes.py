"""Child processes started outside the worker: a module in a fresh interpreter, and nvidia-smi.

Arguments are lists, never a shell string.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_module(module: str, payload: dict[str, Any] | None = None, timeout_s: float | None = None) -> str:
    """Run `python -m MODULE` with the payload as JSON on stdin; its stdout. Raises ChildFailed
    with the last line it printed when it exits non-zero (subprocess.TimeoutExpired on timeout)."""
    proc = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(payload) if payload is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ChildFailed(proc.returncode, tail[0])
    return proc.stdout


class ChildFailed(RuntimeError):
    def __init__(self, code: int, last_line: str) -> None:
        super().__init__(f"exit {code}: {last_line}")
        self.code, self.last_line = code, last_line


def nvidia_smi(query: str, fields: str) -> list[list[str]] | None:
    """Rows of `nvidia-smi --query-QUERY=FIELDS` as lists of stripped cells; None without it."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-{query}={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]
