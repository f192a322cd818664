"""The machine a benchmark ran on, as a markdown block (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from autotuner.execution.capabilities import cpu_model

# Taken at import, before a benchmark pins itself to fewer cores.
USABLE_CORES = len(os.sched_getaffinity(0))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "optuna", "numpy", "sqlalchemy", "psycopg"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on the machine shows here."""
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def machine_lines(load_at_start: str | None = None) -> list[str]:
    load = f"{load_at_start} at the start, {load_average()} at the end" if load_at_start else load_average()
    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, {USABLE_CORES} usable by this process)",
        f"- OS: {platform.platform(terse=True)}",
        f"- load average (1/5/15 min): {load}",
    ]
    lines += [f"- {k}: {v}" for k, v in versions().items()]
    return lines


DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def write_doc(name: str, lines: list[str]) -> Path:
    """Write a benchmark's markdown into docs/benchmarks/ and say where."""
    out = DOCS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return out
