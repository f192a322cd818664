"""Ray nodes started as a user starts them (`ray start`), apart from the driver, and removed
without touching anyone else's Ray.

Each node gets its own ports (never Ray's defaults, which another cluster on the machine may
hold), its own --temp-dir and HOME (so no ~/.ray/auth_token of the machine switches token
authentication on or off), and a marker in its environment that every process it starts
inherits: Ray's daemons, its workers and the trial workers they start. Stopping a node kills the
processes that carry the marker, by pid; `ray stop` would stop every Ray of the machine.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MARK_VAR = "AUTOTUNE_TEST_RAY_MARK"
# --port, node manager, object manager, client server, dashboard (+agent x2), runtime env agent,
# metrics; then a range for workers.
N_PORTS = 9
N_WORKER_PORTS = 40


def ray_cli() -> str | None:
    """The `ray` command of this Python environment, or None."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else shutil.which("ray")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_block(n: int = N_PORTS + N_WORKER_PORTS) -> int:
    """The first of n consecutive ports that are free now, away from Ray's defaults."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        if all(_free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError("no block of free ports")


def process_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def alive(pid: int) -> bool:
    """Running (a zombie is dead: only its entry waits for a parent to read it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def marked(mark: str) -> dict[int, str]:
    """The live processes that carry the marker: pid -> command line."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            pid = int(d.name)
            if process_env(pid).get(MARK_VAR) == mark and alive(pid):
                with contextlib.suppress(OSError):
                    out[pid] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return out


def running_trials(mark: str) -> list[int]:
    """The marked processes that run a trial's worker: a fresh one (`autotuner.measure.worker`),
    or a warm one, forked from a zygote (it keeps its zygote's command line, and its parent is
    that zygote)."""
    procs = marked(mark)
    zygote = "autotuner.execution.zygote"
    out = []
    for pid, cmd in procs.items():
        if "autotuner.measure.worker" in cmd:
            out.append(pid)
        elif zygote in cmd:
            with contextlib.suppress(OSError, IndexError, ValueError):
                if zygote in procs.get(parent_of(pid), ""):
                    out.append(pid)
    return out


def parent_of(pid: int) -> int:
    """A process's parent, from /proc (OSError where it is gone)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])


def kill_marked(mark: str, grace_s: float = 5.0, hard: bool = False) -> None:
    """SIGTERM, then SIGKILL after grace_s (hard: SIGKILL at once), every process that carries
    the marker."""
    for sig in (signal.SIGKILL,) if hard else (signal.SIGTERM, signal.SIGKILL):
        for pid in marked(mark):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while marked(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not marked(mark):
            return


@dataclass
class RayNode:
    """One `ray start` node. `prefix` runs it elsewhere (["ip", "netns", "exec", NS])."""

    head: bool
    num_cpus: int
    address: str = ""  # a worker: the head's HOST:PORT
    node_ip: str = ""
    prefix: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    base_port: int = field(default_factory=free_port_block)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp")))
    log: str = ""

    @property
    def port(self) -> int:
        return self.base_port

    def environment(self) -> dict[str, str]:
        home = self.home()
        home.mkdir(exist_ok=True)
        keep = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {**keep, "HOME": str(home), MARK_VAR: self.mark, **self.env}

    def home(self) -> Path:
        return self.temp_dir / "home"

    def generate_token(self) -> str:
        """`ray get-auth-token --generate`, as a user makes the token on the head: it lands in
        this node's ~/.ray/auth_token. Returns it."""
        cli = ray_cli()
        assert cli, "no ray command"
        subprocess.run(
            [*self.prefix, cli, "get-auth-token", "--generate"],
            env=self.environment(),
            check=True,
            capture_output=True,
            timeout=120,
        )
        return (self.home() / ".ray" / "auth_token").read_text().strip()

    def start(self) -> None:
        cli = ray_cli()
        assert cli, "no ray command"
        p = self.base_port
        argv = (
            [cli, "start", "--head", f"--port={p}"]
            if self.head
            else [cli, "start", f"--address={self.address}"]
        )
        argv += [
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--node-manager-port={p + 1}",
            f"--object-manager-port={p + 2}",
            f"--dashboard-agent-listen-port={p + 5}",
            f"--dashboard-agent-grpc-port={p + 6}",
            f"--runtime-env-agent-port={p + 7}",
            f"--metrics-export-port={p + 8}",
            f"--min-worker-port={p + N_PORTS}",
            f"--max-worker-port={p + N_PORTS + N_WORKER_PORTS - 1}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            "--object-store-memory=100000000",
        ]
        if self.head:
            argv += [
                f"--ray-client-server-port={p + 3}",
                f"--dashboard-port={p + 4}",
                "--include-dashboard=false",
            ]
        if self.node_ip:
            argv.append(f"--node-ip-address={self.node_ip}")
        out = subprocess.run(
            [*self.prefix, *argv],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=180,
            start_new_session=True,
        )
        self.log = out.stdout + out.stderr
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({out.returncode}):\n{self.log[-3000:]}")

    def session(self) -> str:
        """The session of this node's cluster (`ray start --head` makes one)."""
        return (self.temp_dir / "session_latest").resolve().name

    def stop(self) -> None:
        """End every process of this node, by pid, and remove its folder."""
        kill_marked(self.mark)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def left(self) -> dict[int, str]:
        return marked(self.mark)


@dataclass
class Host:
    """A network namespace joined to another by a veth pair: a machine of its own to Ray."""

    netns: str
    ip: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def netns_refusal() -> str | None:
    """Why two hosts cannot be made here (not root, no `ip`, namespaces not allowed), or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"atprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as e:
        why = getattr(e, "stderr", "") or str(e)
        return f"`ip netns add` is not allowed here: {why.strip()[:200]}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    return None


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Two hosts, A and B, on a private /24 joined by veth; removed (with their links) at the end."""
    tag = uuid.uuid4().hex[:6]
    net = f"10.{random.randrange(100, 250)}.{random.randrange(0, 250)}"
    hosts = (Host(f"at{tag}a", f"{net}.1"), Host(f"at{tag}b", f"{net}.2"))
    veth = (f"va{tag}", f"vb{tag}")
    try:
        for h in hosts:
            _ip("netns", "add", h.netns)
            _ip("-n", h.netns, "link", "set", "lo", "up")
        _ip("link", "add", veth[0], "netns", hosts[0].netns, "type", "veth", "peer", "name", veth[1],
            "netns", hosts[1].netns)  # fmt: skip
        for h, dev in zip(hosts, veth, strict=True):
            _ip("-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", dev)
            _ip("-n", h.netns, "link", "set", dev, "up")
        yield hosts
    finally:
        for h in hosts:  # a namespace's removal removes its end of the pair, and so the pair
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True, timeout=30)


def netns_left(host: Host) -> bool:
    return host.netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
