"""The fork server ("zygote") of warm workers: imported once, forked once per measurement block.

    python -m autotuner.execution.zygote WATCH_FD [MODULE ...]

A fresh interpreter (never a fork of the driver, which runs threads) that imports torch and the
worker's modules, plus the runner modules named, and creates no thread pool and no model. It
reads one JSON request a line on stdin and answers JSON lines on stdout:

    {"req": ..., "res": ..., "log": ..., "deadline_s": ..., "env": {...}, "threads": N}
    -> {"pid": PID}               the child started (its own session: the driver kills its group)
    -> {"exit": PID, "code": C}   the child ended; C as Popen's returncode (signal: negative)
    -> {"refused": "why"}         the zygote is not single-threaded: the driver starts a fresh one

Each child does setsid, takes the trial's environment, sends its output to the trial's log and
runs the worker's main, which arms the watchdog on WATCH_FD (the read end of the driver's pipe:
when the driver dies, every child's watcher kills its group) before anything else. The zygote
ends, killing its children's groups, when its stdin closes (the driver is gone).

onnxruntime is not imported here: its import starts a thread, and a process with threads is not
forked. The child imports it (inside the runner) after the fork. OpenBLAS is held to one thread
here for the same reason (numpy's BLAS does no timed work in a trial).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys
import time
import traceback
from typing import Any


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def _child(request: dict[str, Any], watch_fd: int) -> None:
    """In the forked child: become the trial's worker process; never returns."""
    code = 1
    try:
        os.setsid()
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        threads = request.get("threads")
        if threads and "torch" in sys.modules:  # OpenMP was not started here: this sets it
            sys.modules["torch"].set_num_threads(int(threads))
        worker = importlib.import_module(request.get("module") or "autotuner.measure.worker")
        argv = [
            "worker",
            request["req"],
            request["res"],
            "--watch",
            str(watch_fd),
            f"{request['deadline_s']:g}",
        ]
        code = worker.main(argv)
    except BaseException:  # noqa: BLE001 - the trial's log says what happened
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _send(msg: dict[str, Any]) -> None:
    sys.__stdout__.write(json.dumps(msg) + "\n")
    sys.__stdout__.flush()


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def serve(watch_fd: int) -> None:
    children: set[int] = set()
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        _reap(children)
        if not ready:
            continue
        line = stdin.readline()
        if not line:  # the driver is gone: so is everything started here
            for pid in children:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            return
        request = json.loads(line)
        n = threads_now()
        if n != 1:
            _send({"refused": f"the zygote runs {n} threads; forking it is not safe"})
            continue
        pid = os.fork()
        if pid == 0:
            _child(request, watch_fd)
        children.add(pid)
        _send({"pid": pid})


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when this ends
    started = time.perf_counter()
    for name in ("torch", "autotuner.measure.worker", *argv[2:]):
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # not installed: the child imports what it needs, as a fresh worker would
    _send({"ready": True, "import_s": time.perf_counter() - started, "threads": threads_now()})
    serve(int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
