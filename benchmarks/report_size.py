"""Time to write the HTML report and its size, for studies of 100 and 1000 trials.

    python benchmarks/report_size.py

The studies are made by the real driver loop (ask, suggest, record, tell into SQLite) with the
instant executor of driver_overhead.py (fake measured results, no model run), so they hold
everything a real study holds. Each report is then opened in headless Chromium, offline, to
check that it loads without console errors. Writes docs/benchmarks/report.md.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402
from driver_overhead import InstantExecutor  # noqa: E402

from autotuner.api import choose, load_spec, open_study, probe, report, search  # noqa: E402
from autotuner.progress import Progress  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_study(n: int, caps: dict) -> None:
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml", {"name": f"r{n}"})
    url = f"sqlite:///studies/r{n}.db"
    quiet = Progress(quiet=True)
    study = open_study(spec, storage=url, caps=caps)
    search(spec, study, InstantExecutor(spec, caps), trials=n, caps=caps, progress=quiet, storage=url)
    choose(spec, study, None, None, quiet)


def open_in_chromium(path: Path) -> tuple[float, int, int]:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = b.new_context(offline=True).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        t = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        load_s = time.perf_counter() - t
        figures = page.evaluate(
            "Array.from(document.querySelectorAll('.figure'))"
            ".filter(d => d.querySelector('.main-svg')).length"
        )
        b.close()
    return load_s, len(errors), figures


def main() -> None:
    load_start = load_average()
    caps = probe()
    rows = []
    with tempfile.TemporaryDirectory(prefix="autotune-report-") as d:
        os.chdir(d)
        for n in (100, 1000):
            t = time.perf_counter()
            make_study(n, caps)
            made = time.perf_counter() - t
            times = []
            for _ in range(3):
                t = time.perf_counter()
                path = report([f"r{n}"])
                times.append(time.perf_counter() - t)
            size = path.stat().st_size / 2**20
            load_s, errors, figures = open_in_chromium(Path(d) / path)
            row = dict(
                trials=n,
                make_s=made,
                write_s=sorted(times)[1],
                size_mb=size,
                load_s=load_s,
                errors=errors,
                figures=figures,
            )
            print(row, flush=True)
            rows.append(row)
    lines = [
        "# Report: time to write and size",
        "",
        "Produced by `python benchmarks/report_size.py`. Studies made by the real driver loop into SQLite",
        "with the instant executor of `driver_overhead.py` (fake measured results, 200 latency samples",
        "per trial), over the quickstart space; the report is written 3 times (median shown), then",
        "opened in headless Chromium offline. Aim: under 15 s and 10 MB at 1000 trials.",
        "",
        "## Machine",
        "",
        *machine_lines(load_start),
        "",
        "| trials | write s (median of 3) | size MiB | Chromium load s | console errors | figures drawn |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trials']} | {r['write_s']:.2f} | {r['size_mb']:.2f} | {r['load_s']:.2f} | "
            f"{r['errors']} | {r['figures']} |"
        )
    lines += [
        "",
        "Most of the size is plotly.js itself (inlined once, about 4.6 MiB); the figure data and",
        "the trial table grow with the trials.",
    ]
    write_doc("report.md", lines)


if __name__ == "__main__":
    main()
