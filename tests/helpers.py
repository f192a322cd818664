"""Spec builders shared by the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

# A small model keeps each worker quick; it is still a real transformer run by torch and ORT.
SMALL_MODEL = {
    "builtin": "tiny-transformer",
    "options": {"layers": 1, "hidden": 64, "heads": 2, "seq_len": 16, "vocab": 200},
}
# Tests about other behaviour do not depend on what else runs on the machine: no block counts as
# measured under foreign load (tests/measure/test_load.py causes load for real and keeps the default).
NO_LOAD_CHECK = 8.0
# Plain random draws: no covering design at the start (it draws runnable configs only) and no
# refinement at the end, for tests about what the driver does with whatever is proposed.
PLAIN_RANDOM = {"type": "random", "n_startup_trials": 0, "refine_share": 0}
FAST_MEASUREMENT = {
    "warmup_iters": 1,
    "min_iters": 5,
    "min_time_s": 0.05,
    "max_time_s": 0.3,
    "trial_timeout_s": 120,
    "max_foreign_load": NO_LOAD_CHECK,
}


def make_spec_dict(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "model": SMALL_MODEL,
        "space": {
            "backend": ["torch-eager", "onnxruntime-cpu"],
            "precision": ["fp32", "int8-dynamic"],
            "batch_size": {"low": 1, "high": 8, "log": True},
            "threads": [1],
        },
        "objectives": [
            {"metric": "throughput_items_s", "direction": "maximize"},
            {"metric": "latency_p95_ms", "direction": "minimize"},
        ],
        "constraints": ["accuracy_cosine >= 0.99"],
        "budget": {"trials": 4},
        "sampler": {"type": "random"},
        "measurement": FAST_MEASUREMENT,
        "pick": {"top_k": 2, "rounds": 2, "round_time_s": 0.1},
    }
    spec.update(overrides)
    return spec


def write_spec(directory: Path, filename: str = "spec.yaml", **overrides: Any) -> Path:
    path = directory / filename
    path.write_text(yaml.safe_dump(make_spec_dict(**overrides), sort_keys=False))
    return path


def fixed_time(seconds: float, **extra: Any) -> dict[str, Any]:
    """A measurement block that lasts `seconds`, for drills that need a trial to be running (no
    iteration cap: a fast config would otherwise stop at 10,000 iterations, well before)."""
    return {
        "warmup_iters": 1,
        "min_iters": 5,
        "max_iters": 10_000_000,
        "min_time_s": seconds,
        "max_time_s": seconds,
        "trial_timeout_s": 120,
        "max_foreign_load": NO_LOAD_CHECK,
        **extra,
    }


def run_logged(cmd: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a real driver (`autotune ...`) with its stdout and stderr appended to `log`.

    A test that starts drivers keeps what they said and prints it at its end (pytest shows it
    when the test fails): a driver that hung or died is then explained, not guessed at.
    """
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)


def show_log(log: Path) -> None:
    if log.exists():
        print(f"---- {log} ----\n{log.read_text(errors='replace')}")


def wait_for_trials(log: Path, proc: subprocess.Popen[bytes], finished: int, timeout_s: float = 240) -> None:
    """Wait until a driver's log shows `finished` trials ended and one more running.

    Read from the driver's own progress lines (flushed per line), not by polling the study: a
    reader opening the SQLite study while the driver writes can wait out the lock for seconds
    and miss a whole trial on a loaded machine.
    """
    import re
    import time

    line = re.compile(r"^\[\d+/\d+\] trial #\d+ (running)?")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended (exit {proc.returncode}) before it was stopped")
        matches = [m for m in map(line.match, log.read_text(errors="replace").splitlines()) if m]
        running = sum(1 for m in matches if m.group(1))
        ended = len(matches) - running
        if ended >= finished and running > ended:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {finished + 1}th trial running within {timeout_s:g} s")


def dump(url: str) -> str:
    """Every row of every table in a study database, as text: what a reader of the database
    itself (optuna-dashboard, SQL) sees, to compare before and after or to search."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = sqlalchemy.inspect(conn).get_table_names()
            rows = {t: conn.execute(sqlalchemy.text(f'SELECT * FROM "{t}"')).all() for t in tables}
            return "\n".join(
                f"{t} ({len(r)} rows): " + " | ".join(str(cell) for row in r for cell in row)
                for t, r in rows.items()
            )
    finally:
        engine.dispose()


def study_of_refusals(spec_path: Path, storage: str) -> None:
    """A study whose every trial was refused before launch. `autotune run` refuses such a space
    before a study exists; the search stage through the API (or a study from an older version, or
    made on another machine) can still hold one, and the report and `show` must say so."""
    from autotuner.api import check_model, load_spec, make_executor, open_study, probe, search

    spec = check_model(load_spec(spec_path))
    caps = probe()
    with make_executor("local", spec, caps) as executor:
        study = open_study(spec, storage=storage, caps=caps)
        search(spec, study, executor, caps=caps, storage=storage)


def looked_then_promoted(trials: list[Any], min_time_s: float) -> set[str]:
    """Assert that each measured trial of a study with first looks is either its config's first
    block, a short look (timed under min_time_s, accuracy still checked), or a promotion at full
    length; return the config keys seen."""
    from autotuner.search.estimates import config_key
    from autotuner.study import records as rec

    seen: set[str] = set()
    for t in trials:
        if not rec.metrics(t).get("measure_s"):
            continue
        k = config_key(rec.trial_config(t))
        assert rec.is_first_look(t) == (k not in seen), (t.number, rec.info(t))
        if rec.is_first_look(t):
            assert t.user_attrs["measure_s"] < min_time_s and "accuracy_cosine" in t.user_attrs
        else:
            assert rec.is_promotion(t) and t.user_attrs["measure_s"] >= min_time_s
        seen.add(k)
    return seen
