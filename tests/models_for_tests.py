"""Model factories used by the tests. Their misbehaviour is real: a real signal, a real sleep,
a real allocation failure, a real exception, real NaN."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import torch
from torch import nn

_GRANDCHILD: subprocess.Popen | None = None
_LAUNCHED = False


class Misbehaving(nn.Module):
    """Behaves by batch size: 1 fine, 2 SIGSEGV, 3 raise, 4 hang, 5 NaN, 6 allocate 1 PiB,
    7 report its pids and wait (for kill drills). With AUTOTUNE_TEST_GRANDCHILD=N set, its first
    forward starts `sleep N` in a child of its own first (for the drills of leftover processes),
    and appends "BATCH PID" of it to the file AUTOTUNE_TEST_GRANDCHILD_LOG names, if set. With
    AUTOTUNE_TEST_LAUNCH_LOG set, each process's first forward appends "BATCH PID" to that file."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        global _GRANDCHILD, _LAUNCHED
        if os.environ.get("AUTOTUNE_TEST_LAUNCH_LOG") and not _LAUNCHED:
            _LAUNCHED = True  # once a process: which batch each worker was launched for
            with open(os.environ["AUTOTUNE_TEST_LAUNCH_LOG"], "a") as f:
                f.write(f"{b} {os.getpid()}\n")
        if os.environ.get("AUTOTUNE_TEST_GRANDCHILD") and _GRANDCHILD is None:
            _GRANDCHILD = subprocess.Popen(["sleep", os.environ["AUTOTUNE_TEST_GRANDCHILD"]])
            if os.environ.get("AUTOTUNE_TEST_GRANDCHILD_LOG"):
                # The drill's evidence that the grandchild started: its pid, and the batch.
                with open(os.environ["AUTOTUNE_TEST_GRANDCHILD_LOG"], "a") as f:
                    f.write(f"{b} {_GRANDCHILD.pid}\n")
        if b == 2:
            os.kill(os.getpid(), signal.SIGSEGV)
        if b == 3:
            raise ValueError("this model refuses batches of three <script>window.__pwned = 1</script>")
        if b == 4:
            time.sleep(3600)
        if b == 5:
            return self.lin(x) * float("nan")
        if b == 6:
            torch.empty(2**48, dtype=torch.float32)  # 1 PiB: no machine has it
        if b == 7 and os.environ.get("AUTOTUNE_TEST_PIDFILE"):
            # Tell the test who runs this trial (the worker and its parent), then wait to be killed.
            with open(os.environ["AUTOTUNE_TEST_PIDFILE"], "w") as f:
                f.write(f"{os.getpid()} {os.getppid()}")
            time.sleep(3600)
        return self.lin(x)


def misbehaving() -> nn.Module:
    return Misbehaving()


def mlp(hidden: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 4))
