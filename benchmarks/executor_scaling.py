"""Trials per minute with 1, 2 and 4 Ray slots, and Ray's dispatch cost against the local executor.

    python benchmarks/executor_scaling.py

Trials use the benchmark-only sleep runner (benchmarks/sleep_runner.py): 20 timed steps of 50 ms
that use no CPU, so a trial's length is fixed and slots can exceed this machine's 2 cores
without the trials disturbing each other. Each trial still starts its own worker process, as
real trials do. Writes docs/benchmarks/executor_scaling.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ["AUTOTUNE_RUNNERS"] = "sleep=sleep_runner:SleepRunner"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(HERE))

from _machine import load_average, machine_lines, write_doc  # noqa: E402

from autotuner import api  # noqa: E402
from autotuner.api import probe, spec_from_dict  # noqa: E402
from autotuner.progress import Progress  # noqa: E402


def spec(name: str, trials: int):  # noqa: ANN201
    return spec_from_dict(
        {
            "name": name,
            "model": {
                "builtin": "tiny-transformer",
                "options": {"layers": 1, "hidden": 32, "heads": 2, "seq_len": 8, "labels": 4},
            },
            "space": {"backend": ["sleep"], "batch_size": {"low": 1, "high": 100000}, "threads": [1]},
            "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
            "budget": {"trials": trials},
            "sampler": {"type": "random"},
            "measurement": {
                "warmup_iters": 1,
                "min_iters": 20,
                "max_iters": 20,
                "min_time_s": 0,
                "max_time_s": 100,
                "cv_target": 10,
                "trial_timeout_s": 120,
            },
        }
    )


class Stamps(Progress):
    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.ends: list[float] = []
        self.walls: list[float] = []

    def trial_finished(self, n, total, number, summary, seconds, failure, best) -> None:  # noqa: ANN001
        assert failure is None, summary
        self.ends.append(time.monotonic())
        self.walls.append(seconds)


def measure(executor_name: str, slots: int, trials: int, caps: dict) -> dict:
    s = spec(f"{executor_name}{slots}", trials)
    url = f"sqlite:///{s.name}.db"
    stamps = Stamps()
    study = api.open_study(s, storage=url, caps=caps)
    if executor_name == "local":
        ex = api.make_executor("local", s, caps)
    else:
        import ray

        ray.init(
            num_cpus=slots,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=False,
        )
        ex = api.make_executor("ray", s, caps)
        assert ex.slots == slots, ex.slots
    start = time.monotonic()
    try:
        api.search(s, study, ex, trials=trials, caps=caps, progress=stamps, storage=url)
    finally:
        ex.close()
        if executor_name == "ray":
            import ray

            ray.shutdown()
    elapsed = time.monotonic() - start
    per_trial = statistics.median(stamps.walls)
    return {
        "executor": executor_name,
        "slots": slots,
        "trials": trials,
        "elapsed_s": elapsed,
        "trials_per_min": trials / elapsed * 60,
        "trial_wall_p50_s": per_trial,
    }


def main() -> None:
    load_start = load_average()
    caps = probe()
    rows = []
    with tempfile.TemporaryDirectory(prefix="autotune-scaling-") as d:
        os.chdir(d)
        rows.append(measure("local", 1, 8, caps))
        print(rows[-1], flush=True)
        for slots in (1, 2, 4):
            rows.append(measure("ray", slots, 8 * slots, caps))
            print(rows[-1], flush=True)
    local = rows[0]
    ray1 = rows[1]
    dispatch = ray1["trial_wall_p50_s"] - local["trial_wall_p50_s"]
    lines = [
        "# Executors: trials per minute and dispatch cost",
        "",
        "Produced by `python benchmarks/executor_scaling.py`. Fixed-length trials (sleep runner: 20",
        "steps of 50 ms with no CPU use, plus the worker process start), a real local Ray cluster",
        "declared with 1, 2 or 4 CPUs, one trial per CPU. The driver, SQLite study and worker",
        "processes are the real ones.",
        "",
        "## Machine",
        "",
        *machine_lines(load_start),
        "",
        "| executor | slots | trials | wall s | trials/min | per-trial wall p50 s | vs slots x ray-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = (
            r["trials_per_min"] / (ray1["trials_per_min"] * r["slots"]) if r["executor"] == "ray" else None
        )
        lines.append(
            f"| {r['executor']} | {r['slots']} | {r['trials']} | {r['elapsed_s']:.1f} | "
            f"{r['trials_per_min']:.1f} | {r['trial_wall_p50_s']:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} |"
        )
    lines += [
        "",
        f"Ray's dispatch cost per trial (per-trial wall, ray with 1 slot minus local): "
        f"{dispatch * 1000:.0f} ms.",
        "The aim is at least 0.9 x slots; the last column is trials/min divided by slots x the",
        "1-slot Ray figure. The trials sleep, but each starts a Python worker process, which is CPU",
        "work: with 4 slots on a 2-core machine those starts contend for the cores, which is where",
        "the shortfall from linear comes from.",
    ]
    write_doc("executor_scaling.md", lines)


if __name__ == "__main__":
    main()
