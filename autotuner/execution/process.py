"""Start a worker process, enforce its deadline, and turn how it ended into a TrialResult."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autotuner.execution.warm import TIMED_OUT, WarmWorkers
from autotuner.files import pid_alive
from autotuner.result import TrialResult

_LIVE: set[subprocess.Popen[bytes]] = set()


def kill_all() -> None:
    """Kill every worker still running (the driver is stopping)."""
    for proc in list(_LIVE):
        _kill_group(proc)
    WarmWorkers.kill_all()


def run_worker(
    request: dict[str, Any],
    timeout_s: float,
    threads: int | None = None,
    warm: WarmWorkers | None = None,
) -> dict[str, Any] | TrialResult:
    """Run `python -m autotuner.measure.worker` on a request; the raw result dict, or a failure.

    The worker gets a session of its own, and nothing of that session outlives the trial: its
    group is killed when the worker ends (by a normal exit too: a grandchild that the model
    started is not left running), on timeout, and by the worker's own watcher when this process
    dies (see watchdog). Arguments are passed as a list, never through a shell. With `warm` the
    worker is forked from the executor's zygote instead of started fresh (see zygote).
    """
    sweep_stale_trial_dirs()
    env = worker_env(threads)
    tmp = tempfile.mkdtemp(prefix=f"{TRIAL_DIR_PREFIX}{os.getpid()}-")
    try:
        env["AUTOTUNE_TRIAL_DIR"] = tmp  # the command runner's scratch folders go in here
        return _run_in(Path(tmp), request, timeout_s, env, warm)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_in(
    tmp: Path,
    request: dict[str, Any],
    timeout_s: float,
    env: dict[str, str],
    warm: WarmWorkers | None = None,
) -> dict[str, Any] | TrialResult:
    req_path, res_path, log_path = tmp / "request.json", tmp / "result.json", tmp / "worker.log"
    request = {**request, "asked_at": time.time()}  # the worker's start-up is measured from here
    req_path.write_text(json.dumps(request))
    code = warm.run(req_path, res_path, log_path, timeout_s, env) if warm is not None else None
    how = "warm" if code is not None else "fresh"
    if code is None:  # fresh, or the warm workers could not start this one
        code = _run_fresh(req_path, res_path, log_path, timeout_s, env)
    if code == TIMED_OUT:
        return TrialResult.failure(
            "timeout", f"the trial ran past its {timeout_s:g} s deadline and was killed"
        )
    result = classify_exit(code, res_path, log_path)
    if isinstance(result, dict):  # how the block's process was started, kept with its result
        result.setdefault("info", {})["worker"] = how
        if how == "warm" and warm is not None and warm.proc is not None:
            result["info"]["zygote"] = warm.proc.pid  # the fork server it came from
    return result


def _run_fresh(req_path: Path, res_path: Path, log_path: Path, timeout_s: float, env: dict[str, str]) -> int:
    """A fresh interpreter for the block; its exit status, or TIMED_OUT."""
    watch_r, watch_w = os.pipe()  # the worker's watcher reads end of file when this process dies
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "autotuner.measure.worker",
                    str(req_path),
                    str(res_path),
                    "--watch",
                    str(watch_r),
                    f"{timeout_s:g}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                pass_fds=(watch_r,),
            )
            os.close(watch_r)
            watch_r = -1
            _LIVE.add(proc)
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return TIMED_OUT
            finally:
                _kill_group(proc)
                _LIVE.discard(proc)
    finally:
        for fd in (watch_r, watch_w):
            if fd >= 0:
                os.close(fd)


def classify_exit(code: int, res_path: Path, log_path: Path) -> dict[str, Any] | TrialResult:
    """The worker's result, or a failure classified by how it ended (the same on both paths)."""
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


TRIAL_DIR_PREFIX = "autotune-trial-"


def sweep_stale_trial_dirs() -> list[Path]:
    """Remove the trial folders that a killed executor left in the temporary folder (before each
    trial: one listing of the folder). A folder is named for the process that made it; it is
    stale when that process is gone. Returns the folders removed."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{TRIAL_DIR_PREFIX}*-*"):
        pid = d.name.removeprefix(TRIAL_DIR_PREFIX).split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    # CUDA numbers GPUs fastest first unless told otherwise, NVML by PCI bus: with this the
    # integers of CUDA_VISIBLE_DEVICES name the same GPU for both (telemetry reads the trial's).
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
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
