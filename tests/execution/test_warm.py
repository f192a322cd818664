"""Warm workers keep every block in a process of its own: real zygote, real forks, real torch.

- a crash (SIGSEGV) ends only its block, classified; the next block runs warm from the same zygote;
- a hang past the deadline is killed, and the zygote serves the next block;
- the child's torch threads are the trial's (OpenMP was never started in the zygote);
- start-up is recorded on both paths, and a fork is faster to start than a fresh interpreter;
- a bad `measurement.workers` is one clear line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import FAST_MEASUREMENT, write_spec

from autotuner import api
from autotuner.execution import TrialRequest, make_executor
from autotuner.progress import Progress
from autotuner.spec.schema import Spec

MISBEHAVING = {
    "model": {"factory": "models_for_tests:misbehaving"},
    "inputs": [{"name": "x", "shape": ["batch", 16]}],
    "objectives": [{"metric": "latency_p50_ms", "direction": "minimize"}],
    "constraints": [],
}


def _spec(directory: Path, workers: str = "warm", timeout_s: float = 120, batches: tuple = (1, 2, 4)) -> Spec:
    measurement = {**FAST_MEASUREMENT, "trial_timeout_s": timeout_s, "workers": workers}
    space = {
        "backend": ["torch-eager"],
        "precision": ["fp32"],
        "batch_size": list(batches),
        "threads": [1, 2],
    }
    return api.check_model(
        api.load_spec(write_spec(directory, **MISBEHAVING, space=space, measurement=measurement))
    )


def _block(ex: Any, batch: int, threads: int = 1) -> Any:
    config = {"backend": "torch-eager", "precision": "fp32", "batch_size": batch, "threads": threads}
    return ex.submit(TrialRequest(0, config)).result()


def test_a_crash_ends_only_its_block_and_the_next_runs_warm(in_tmp: Path, caps: dict) -> None:
    with make_executor("local", _spec(in_tmp), caps) as ex:
        first = _block(ex, 1)
        assert first.ok, first.failure_message
        zygote = ex.warm.proc.pid
        crashed = _block(ex, 2)  # the model sends itself SIGSEGV
        assert not crashed.ok and crashed.failure_class == "crash", crashed
        assert "SIGSEGV" in crashed.failure_message
        after = _block(ex, 1)
        assert after.ok, after.failure_message
        assert ex.warm.proc.pid == zygote and ex.warm.off is None  # same zygote, still warm
        assert 0 <= after.metrics["worker_startup_s"] < 60
        assert after.metrics["warmup_s"] >= 0


def test_a_hang_is_killed_at_its_deadline_and_the_zygote_serves_on(in_tmp: Path, caps: dict) -> None:
    with make_executor("local", _spec(in_tmp, timeout_s=15), caps) as ex:
        hung = _block(ex, 4)  # the model sleeps an hour
        assert hung.failure_class == "timeout", hung
        after = _block(ex, 1)
        assert after.ok and ex.warm.off is None, after.failure_message


def test_the_childs_torch_threads_are_the_trials(in_tmp: Path) -> None:
    """A stand-in main, forked from a real zygote, writes what torch sees in the child."""
    (in_tmp / "threads_probe.py").write_text(
        "from pathlib import Path\n"
        "def main(argv):\n"
        "    import torch\n"
        "    Path(argv[2]).write_text(str(torch.get_num_threads()))\n"
        "    return 0\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{in_tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_DRIVER, str(in_tmp)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "2", "1"], out.stdout


_THREADS_DRIVER = """
import sys
from pathlib import Path
from autotuner.execution.process import worker_env
from autotuner.execution.warm import WarmWorkers
tmp = Path(sys.argv[1])
w = WarmWorkers(("threads_probe",))
seen = []
for i, n in enumerate((1, 2, 1)):
    req, res, log = tmp / "req", tmp / f"res{i}", tmp / "log"
    req.write_text("{}")
    code = w.run(req, res, log, 60, worker_env(n), module="threads_probe")
    assert code == 0 and w.off is None, (code, w.off, log.read_text())
    seen.append(res.read_text())
w.close()
print(" ".join(seen))
"""


def test_start_up_is_recorded_on_both_paths_and_a_fork_starts_faster(in_tmp: Path, caps: dict) -> None:
    startup = {}
    for workers in ("fresh", "warm"):
        (in_tmp / workers).mkdir()
        with make_executor("local", _spec(in_tmp / workers, workers), caps) as ex:
            results = [_block(ex, 1) for _ in range(2)]
        assert all(r.ok for r in results), [r.failure_message for r in results]
        startup[workers] = min(r.metrics["worker_startup_s"] for r in results)
    assert startup["warm"] < startup["fresh"], startup


def test_a_bad_workers_value_is_one_clear_line(in_tmp: Path) -> None:
    path = write_spec(in_tmp, **MISBEHAVING, measurement={"workers": "tepid"})
    out = subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "run", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2, out
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "workers" in lines[0], out.stderr


def test_a_runs_wall_time_is_broken_down_in_the_summary_and_the_report(in_tmp: Path) -> None:
    """A real small run: the end-of-run line and the HTML report say where the wall time went."""
    space = {"backend": ["torch-eager"], "precision": ["fp32"], "batch_size": [1], "threads": [1]}
    path = write_spec(
        in_tmp, **MISBEHAVING, space=space, measurement=FAST_MEASUREMENT, sampler={"type": "grid"}
    )
    out = subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("wall time "))
    wall = float(line.split()[2])
    parts = dict(re.findall(r"([a-z-]+) ([0-9.]+) s", line.split(":", 1)[1]))
    assert set(parts) == {"start-up", "setup", "warm-up", "timed", "driver"}, line
    values = {k: float(v) for k, v in parts.items()}
    # Start-up can print 0.0: the zygote starts before the machine probe, so its blocks start warm.
    assert values["start-up"] >= 0 and values["timed"] > 0, line
    assert abs(sum(values.values()) - wall) < 0.5, line  # the parts are the whole, to rounding
    html = next((in_tmp / "reports").glob("*.html")).read_text()
    assert "class='wall'>Wall time" in html and "start-up" in html


def test_the_models_libraries_are_imported_once_in_the_zygote_not_in_each_block(
    in_tmp: Path, caps: dict
) -> None:
    """MiniLM's block imports transformers' BERT modelling (2-4 s on 2 cores): a child of the
    local executor's zygote finds it imported already, and its block still measures."""
    (in_tmp / "modules_probe.py").write_text(
        "import sys\nfrom pathlib import Path\n"
        "def main(argv):\n"
        "    Path(argv[2]).write_text(str('transformers.models.bert.modeling_bert' in sys.modules))\n"
        "    return 0\n"
    )
    spec = api.check_model(
        api.load_spec(
            write_spec(
                in_tmp,
                model={"builtin": "minilm", "options": {"seq_len": 16}},
                space={"backend": ["torch-eager"], "precision": ["fp32"], "batch_size": [1], "threads": [1]},
                measurement={**FAST_MEASUREMENT, "workers": "warm"},
            )
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{in_tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with make_executor("local", spec, caps) as ex:
        assert "transformers.models.bert.modeling_bert" in ex.warm.modules
        req, res, log = in_tmp / "req", in_tmp / "res", in_tmp / "log"
        req.write_text("{}")
        assert ex.warm.run(req, res, log, 120, env, module="modules_probe") == 0, log.read_text()
        assert res.read_text() == "True"
        block = _block(ex, 1)
        assert block.ok and ex.warm.off is None, block.failure_message


def test_the_zygote_outlives_the_search_and_serves_the_race(in_tmp: Path, caps: dict) -> None:
    """A search that ends on its own leaves the executor's zygote up: the race's blocks fork from
    the zygote the search used (no restart, which costs 3-7 s and one of its restarts)."""
    spec = _spec(in_tmp, batches=(1,))  # batch 1 only: the model misbehaves at 2 and 4
    quiet = Progress(quiet=True)
    with make_executor("local", spec, caps) as ex:
        study = api.open_study(spec, storage=f"sqlite:///{in_tmp / 's.db'}", caps=caps, progress=quiet)
        api.search(spec, study, ex, trials=2, caps=caps, progress=quiet)
        zygote = ex.warm.proc
        assert zygote is not None and zygote.poll() is None, "the search's end stopped the zygote"
        block = _block(ex, 1, threads=2)
        assert block.ok, block.failure_message
        assert block.info["worker"] == "warm"  # forked, not a fresh interpreter after a failed ask
        assert ex.warm.proc is zygote and ex.warm.restarts_left == 1 and ex.warm.off is None
