"""A child that ends itself: at its deadline, and when whoever started it dies.

Used by the trial worker and by every module run in a child (`processes.run_module`: the fp32
reference, the capabilities probe). The parent keeps the write end of a pipe and hands the read
end to the child, which forks a small watcher at start (before it loads any model) that waits
on the pipe. When the
starting process dies, by kill -9 too, the kernel closes its end and the watcher reads end of
file; when the deadline passes first, the wait times out. Either way the watcher kills the
child's whole process group (the child is its session's leader), grandchildren included.

A process rather than a thread: a trial stuck in native code that holds the GIL would starve a
thread, not another process. The watcher only makes system calls, which is what is safe after a
fork in a process that already runs threads (BLAS pools start at import).
"""

from __future__ import annotations

import os
import select
import signal
import time
import warnings

# Past the parent's own deadline: normally the parent kills the child first and says why.
GRACE_S = 10.0
ENV = "AUTOTUNE_WATCH"  # "FD" or "FD:DEADLINE_S", for children started by processes.run_module


def arm_from_env() -> int | None:
    """Arm the watcher that the parent asked for in the environment; its pid, or None."""
    value = os.environ.pop(ENV, "")
    if not value:
        return None
    fd, _, deadline = value.partition(":")
    return arm(int(fd), float(deadline) if deadline else None)


def arm(fd: int, deadline_s: float | None) -> int:
    """Fork the watcher of this process; its pid. `fd` is the read end of the parent's pipe;
    no deadline: it watches for the parent's death only."""
    worker = os.getpid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with BLAS threads running
        pid = os.fork()
    if pid:
        os.close(fd)  # the worker itself never reads it
        return pid
    try:  # the watcher: system calls only, then out without running any Python cleanup
        end = time.monotonic() + deadline_s + GRACE_S if deadline_s is not None else float("inf")
        _watch(fd, worker, end)
    finally:
        os._exit(0)
    return 0  # pragma: no cover - never reached


def _watch(fd: int, worker: int, end: float) -> None:
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break  # the deadline: the parent should have ended this child by now
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))  # 0.5 s: notice the child's exit
        if ready and not os.read(fd, 64):
            break  # end of file: the process that started the worker is gone
        if os.getppid() != worker:
            return  # the child ended on its own; the parent cleans its group up
    os.killpg(os.getpgid(0), signal.SIGKILL)
