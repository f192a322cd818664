"""The driver's side of warm workers: one zygote per executor, a forked child per block.

The zygote (see zygote) is a fresh interpreter started once with the driver's watch pipe; each
block is one child forked from it, in a session of its own whose group the driver kills at the
block's end, its deadline, or the driver's exit, exactly as with a fresh worker. A zygote that
died is started again once; after that, or when it refuses to fork, blocks run in fresh
interpreters (a one-line warning says so).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from autotuner.models.builtins import library_modules
from autotuner.runners.registry import targets

if TYPE_CHECKING:
    from autotuner.spec.schema import Spec

TIMED_OUT = 1 << 16  # a block past its deadline (process.py reads it from here)
# The zygote's own environment: OpenBLAS held to one thread, so that numpy's import starts none
# and the zygote stays forkable (see zygote).
ZYGOTE_ENV = {"OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class WarmWorkers:
    _all: ClassVar[weakref.WeakSet[WarmWorkers]] = weakref.WeakSet()

    def __init__(self, modules: tuple[str, ...] = (), restarts: int = 1) -> None:
        self.modules = modules
        self.restarts_left = restarts
        self.proc: subprocess.Popen[bytes] | None = None
        self.watch_w = -1
        self.child: int | None = None
        self.off: str | None = None  # why blocks run fresh now
        self.lock = threading.Lock()
        self.buf = b""
        WarmWorkers._all.add(self)

    def begin(self) -> None:
        """Start the zygote in the background now (its imports overlap the driver's own start);
        the first block waits for it."""
        threading.Thread(target=self._ensure_locked, name="autotune-zygote", daemon=True).start()

    def _ensure_locked(self) -> None:
        with self.lock:
            self._ensure()

    def _start(self) -> None:
        watch_r, self.watch_w = os.pipe()
        env = {**os.environ, **ZYGOTE_ENV}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autotuner.execution.zygote", str(watch_r), *self.modules],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
            pass_fds=(watch_r,),
        )
        os.close(watch_r)
        self.buf = b""
        ready = self._read(120.0)
        if not ready or not ready.get("ready"):
            self._stop()
            raise RuntimeError("the zygote did not start")

    def _read(self, timeout_s: float) -> dict[str, Any] | None:
        """One message from the zygote; None at the timeout; {} when it died."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return {}
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def _stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()
            self.proc = None
        if self.watch_w >= 0:
            os.close(self.watch_w)
            self.watch_w = -1

    def _ensure(self) -> bool:
        if self.off:
            return False
        if self.proc is not None and self.proc.poll() is None:
            return True
        if self.proc is not None:  # it died
            self._stop()
            if self.restarts_left <= 0:
                return self._fall_back("the zygote died twice")
            self.restarts_left -= 1
        try:
            self._start()
        except (OSError, RuntimeError) as e:
            return self._fall_back(f"the zygote could not start ({e})")
        return True

    def _fall_back(self, why: str) -> bool:
        self.off = why
        print(f"autotune: warm workers off, fresh interpreters from now: {why}", file=sys.stderr)
        return False

    def run(
        self,
        req: Path,
        res: Path,
        log: Path,
        timeout_s: float,
        env: dict[str, str],
        module: str | None = None,
    ) -> int | None:
        """Run one block in a child of the zygote: its exit status, TIMED_OUT, or None where it
        could not be started warm (the caller starts a fresh interpreter). `module`: another
        main than the worker's, with the worker's argv (the tests' probes)."""
        with self.lock:
            if not self._ensure():
                return None
            assert self.proc is not None and self.proc.stdin is not None
            ask = {"req": str(req), "res": str(res), "log": str(log), "deadline_s": timeout_s}
            ask |= {"env": env, "threads": _threads(env), "module": module}
            try:
                self.proc.stdin.write((json.dumps(ask) + "\n").encode())
                self.proc.stdin.flush()
            except OSError:
                return None
            got = self._read(30.0)
            if not got or "pid" not in got:
                if got and "refused" in got:
                    self._fall_back(got["refused"])
                return None
            self.child = pid = int(got["pid"])
            try:
                return self._wait(pid, timeout_s)
            finally:
                _killpg(pid)
                self.child = None

    def _wait(self, pid: int, timeout_s: float) -> int:
        end = time.monotonic() + timeout_s
        while True:
            got = self._read(max(0.0, end - time.monotonic()))
            if got is None:  # the deadline: kill the group, then take the zygote's report
                _killpg(pid)
                self._read(10.0)
                return TIMED_OUT
            if got == {}:  # the zygote died under the block (or the driver is stopping)
                _killpg(pid)
                _await_exit(pid)  # not ours to wait for: the zygote was its parent
                return -signal.SIGKILL
            if got.get("exit") == pid:
                return int(got["code"])

    def close(self) -> None:
        with self.lock:
            self._stop()

    @classmethod
    def kill_all(cls) -> None:
        """The driver is stopping: every child's group and every zygote go."""
        children = []
        for w in list(cls._all):
            if w.child is not None:
                children.append(w.child)
                _killpg(w.child)
            if w.proc is not None:
                _killpg(w.proc.pid)
        for pid in children:
            _await_exit(pid)


_SHARED: dict[tuple[str, ...], WarmWorkers] = {}
_SHARED_LOCK = threading.Lock()


def shared_warm_workers(modules: tuple[str, ...]) -> WarmWorkers:
    """This process's warm workers for these modules, started on first use and kept for the
    process's life: a Ray worker process runs one trial at a time and is kept between tasks, so
    its zygote serves every block Ray sends it. The zygote ends with the process (its stdin
    closes), killing the block it runs, as when the local driver dies."""
    with _SHARED_LOCK:
        warm = _SHARED.get(modules)
        if warm is None:
            warm = _SHARED[modules] = WarmWorkers(modules)
        return warm


def _threads(env: dict[str, str]) -> int | None:
    v = env.get("OMP_NUM_THREADS")
    return int(v) if v and v.isdigit() else None


def _await_exit(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until a process killed with SIGKILL is gone or a zombie: SIGKILL is delivered
    asynchronously, and a child of the zygote is not ours to wait for."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return
        time.sleep(0.02)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def zygote_modules(spec: Spec) -> tuple[str, ...] | None:
    """What a zygote for this spec imports: its runners' modules and its model's libraries; None
    where the spec asks for a fresh interpreter per block (`measurement.workers: fresh`)."""
    if spec.measurement.workers != "warm":
        return None
    return runner_modules(spec) + library_modules(spec)


def runner_modules(spec: Spec) -> tuple[str, ...]:
    """The runner modules of the spec's backends, for the zygote to import (they import their
    heavy libraries inside methods, so importing them starts no thread)."""
    found = []
    for backend in spec.backends:
        for name, target in targets().items():
            if backend == name or backend.startswith(name + "-"):
                found.append(target.partition(":")[0])
    return tuple(dict.fromkeys(found))
