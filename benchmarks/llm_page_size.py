"""Page size against waste, concurrency, preemptions and speed under a fixed KV budget.

    python benchmarks/llm_page_size.py            # runs search_spaces/llm.yaml (about 3 minutes)
    python benchmarks/llm_page_size.py DIR        # reads the study a run left in DIR/studies/llm.db

Writes docs/benchmarks/llm_page_size.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "page_waste_pct",
    "concurrency_reached",
    "preemptions",
    "peak_pages_used",
    "kv_pages",
    "output_tokens_s",
    "tpot_p50_ms",
    "ttft_p95_ms",
)


def table(db: Path) -> list[str]:
    study = optuna.load_study(study_name="llm", storage=f"sqlite:///{db}")
    rows = [
        "| precision | batch_size | page_size | " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * (3 + len(COLUMNS)),
    ]
    key = lambda t: tuple(t.user_attrs["config"][k] for k in ("precision", "batch_size", "page_size"))  # noqa: E731
    for t in sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=key):
        c, u = t.user_attrs["config"], t.user_attrs
        cells = [f"{u[m]:.1f}" if isinstance(u.get(m), float) else str(u.get(m)) for m in COLUMNS]
        rows.append(
            f"| {c['precision']} | {c['batch_size']} | {c['page_size']} | " + " | ".join(cells) + " |"
        )
    return rows


def main() -> None:
    load = load_average()
    if len(sys.argv) > 1:
        db = Path(sys.argv[1]) / "studies" / "llm.db"
        rows = table(db)
    else:
        with tempfile.TemporaryDirectory(prefix="autotune-llm-") as d:
            subprocess.run(
                ["autotune", "run", str(ROOT / "search_spaces" / "llm.yaml")],
                cwd=d,
                check=True,
                stdout=subprocess.DEVNULL,
                env=os.environ,
            )
            rows = table(Path(d) / "studies" / "llm.db")
    lines = [
        "# LLM serving: page size under a fixed KV budget",
        "",
        "Produced by `python benchmarks/llm_page_size.py` (one run of `search_spaces/llm.yaml`: a seeded",
        "4-layer tiny Llama, 24 requests with prompts of 16-128 tokens and 32 output tokens, all queued",
        "at once, KV budget 1 MiB, 2 threads). The budget is fixed in bytes, so bigger pages mean fewer",
        "pages; bf16 halves the bytes per token and so doubles the pages.",
        "",
        "## Machine",
        "",
        *machine_lines(load),
        "",
        *rows,
        "",
        "Page waste is the share of allocated KV slots left empty when the requests finish",
        "(sum over requests of pages x page_size - tokens, over the allocated slots); it depends on",
        "the page size and the request lengths only. Concurrency is the most requests generating at",
        "once; preemptions are requests the engine evicted to make room.",
    ]
    for line in rows:
        print(line)
    write_doc("llm_page_size.md", lines)


if __name__ == "__main__":
    main()
