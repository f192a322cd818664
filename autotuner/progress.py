"""Live progress on a terminal or in a CI log: one line when a trial starts and when it ends."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, TextIO


def fmt_config(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


class Progress:
    def __init__(self, out: TextIO | None = None, quiet: bool = False) -> None:
        self.out = out or sys.stdout
        self.quiet = quiet
        self.failures: Counter[str] = Counter()
        self.best: str | None = None
        self.started = time.monotonic()

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.out, flush=True)

    def trial_started(self, n: int, total: int, number: int, config: dict[str, Any]) -> None:
        self.say(f"[{n}/{total}] trial #{number} running: {fmt_config(config)}")

    def trial_finished(
        self,
        n: int,
        total: int,
        number: int,
        summary: str,
        seconds: float,
        failure: str | None,
        best: str | None,
    ) -> None:
        if failure:
            self.failures[failure] += 1
        if best:
            self.best = best
        fails = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
        self.say(
            f"[{n}/{total}] trial #{number} {summary} ({seconds:.1f}s) | "
            f"best feasible: {self.best or 'none yet'} | failures: {fails}"
        )

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        cells = [header, *[[fmt_value(c) for c in r] for r in rows]]
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
        for j, r in enumerate(cells):
            self.say("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if j == 0:
                self.say("  ".join("-" * w for w in widths))
