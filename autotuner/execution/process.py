"""Start a worker process, enforce its deadline, and turn how it ended into a TrialResult."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from autotuner.result import TrialResult

_LIVE: set[subprocess.Popen[bytes]] = set()


def kill_all() -> None:
    """Kill every worker still running (the driver is stopping)."""
    for proc in list(_LIVE):
        _kill_group(proc)


def run_worker(
    request: dict[str, Any], timeout_s: float, threads: int | None = None
) -> dict[str, Any] | TrialResult:
    """Run `python -m autotuner.execution.worker` on a request; the raw result dict, or a failure.

    The worker gets a session of its own so that a timeout kills it with all its children.
    Arguments are passed as a list, never through a shell.
    """
    env = worker_env(threads)
    with tempfile.TemporaryDirectory(prefix="autotune-trial-") as tmp:
        req_path = Path(tmp) / "request.json"
        res_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "worker.log"
        req_path.write_text(json.dumps(request))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "autotuner.execution.worker", str(req_path), str(res_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            _LIVE.add(proc)
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return TrialResult.failure(
                    "timeout", f"the trial ran past its {timeout_s:g} s deadline and was killed"
                )
            except BaseException:
                _kill_group(proc)
                raise
            finally:
                _LIVE.discard(proc)
        if res_path.exists() and code == 0:
            return json.loads(res_path.read_text())
        tail = _tail(log_path)
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            hint = " (the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
            return TrialResult.failure("crash", f"worker died on {name}{hint}. {tail}".strip())
        if "MemoryError" in tail or "out of memory" in tail.lower():
            return TrialResult.failure("oom", f"worker exited {code}: {tail}")
        return TrialResult.failure("error", f"worker exited {code}: {tail}")


def worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    useful = [ln for ln in text if ln.strip() and "Warning" not in ln]
    return " | ".join(useful[-lines:])[-800:]
