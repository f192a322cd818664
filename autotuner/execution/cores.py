"""Disjoint CPU cores for trials that share a node (Ray places them; this pins them).

Ray counts CPUs but does not pin them. Each trial takes `n` cores by locking one file per core
under a node-local folder, so two trials on one node never share a core; the locks go with the
process, so a killed trial frees its cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "autotune-cores"


@contextlib.contextmanager
def hold_cores(n: int, declared: int | None = None, wait_s: float = 120.0) -> Iterator[tuple[int, ...]]:
    """Hold n of this node's CPU slots and return the cores they map to.

    The slots are the CPUs Ray was told the node has (`declared`); where that is more than the
    cores the process may use, slots map onto cores round-robin: the user declared the overcommit.
    """
    LOCK_DIR.mkdir(exist_ok=True)
    avail = sorted(os.sched_getaffinity(0))
    slots = max(len(avail), int(declared or 0))
    n = max(1, min(n, slots))
    held: dict[int, int] = {}
    deadline = time.monotonic() + wait_s
    try:
        while len(held) < n:
            for slot in range(slots):
                if slot in held or len(held) == n:
                    continue
                fd = os.open(LOCK_DIR / f"{slot}.lock", os.O_CREAT | os.O_RDWR, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held[slot] = fd
                except BlockingIOError:
                    os.close(fd)
            if len(held) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {n} free cores on this node after {wait_s:g} s")
                time.sleep(0.05)
        yield tuple(sorted({avail[slot % len(avail)] for slot in held}))
    finally:
        for fd in held.values():
            os.close(fd)
