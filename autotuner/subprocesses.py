"""Child processes started outside the worker: a module in a fresh interpreter, and nvidia-smi.

Arguments are lists, never a shell string.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from autotuner.watchdog import ENV


def run_module(module: str, payload: dict[str, Any] | None = None, timeout_s: float | None = None) -> str:
    """Run `python -m MODULE` with the payload as JSON on stdin; its stdout. Raises ChildFailed
    with the last line it printed when it exits non-zero (subprocess.TimeoutExpired on timeout).

    The child gets a session of its own, killed whole when it ends: a process that the model
    started there (and that would hold its output pipe open) does not outlive it. Its output
    goes to files, so that the wait is for the child, not for the last holder of a pipe. The
    module calls `watchdog.arm_from_env()` first, so that it ends when this process dies.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        inp.write(json.dumps(payload).encode() if payload is not None else b"")
        inp.seek(0)
        watch_r, watch_w = os.pipe()  # the child's watcher: it ends when this process dies
        env = {**os.environ, ENV: f"{watch_r}:{timeout_s:g}" if timeout_s else str(watch_r)}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                stdin=inp,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
                pass_fds=(watch_r,),
            )
        finally:
            os.close(watch_r)
        try:
            code = proc.wait(timeout=timeout_s)
        finally:
            os.close(watch_w)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if code != 0:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        raise ChildFailed(code, tail[0])
    return stdout


class ChildFailed(RuntimeError):
    """Internal, not an AutotuneError: a child process exited non-zero. Every caller turns it
    into a user error or a classified trial failure, so it never reaches the CLI as itself."""

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
