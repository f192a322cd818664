"""The command runner drives a real external program (tests/bench_script.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import optuna
import pytest
from helpers import NO_LOAD_CHECK
from optuna.trial import TrialState

from autotuner.api import run, spec_from_dict
from autotuner.errors import SpecError
from autotuner.progress import Progress

QUIET = Progress(quiet=True)
HOSTILE = "$(touch pwned); `touch pwned2` && rm -rf ./x | cat > pwned3 ; echo 'q\"uote'"


def spec_dict(tmp: Path, **command) -> dict:  # noqa: ANN003
    shutil.copy(Path(__file__).parents[1] / "bench_script.py", tmp / "bench_script.py")
    return {
        "name": "cmd",
        "model": {"external": "matrix-product"},
        "space": {"backend": "command", "size": [32, 128], "label": [HOSTILE]},
        "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
        "constraints": ["latency_p50_ms <= 1000"],
        "budget": {"trials": 2},
        "sampler": {"type": "grid"},
        "pick": {"rounds": 0},
        "measurement": {"max_foreign_load": NO_LOAD_CHECK},
        "command": {
            "argv": [
                sys.executable,
                "bench_script.py",
                "--size",
                "{size}",
                "--label",
                "{label}",
                "--reps",
                "5",
            ],
            "metrics": {"throughput_items_s": "results.throughput", "latency_p50_ms": "results.latency.p50"},
            **command,
        },
        "base_dir": str(tmp),
    }


def _trials() -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="cmd", storage="sqlite:///studies/cmd.db").trials


def test_metrics_from_stdout_and_values_reach_the_program_literally(in_tmp: Path) -> None:
    out = run(spec_from_dict(spec_dict(in_tmp)), progress=QUIET)
    trials = _trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.user_attrs["throughput_items_s"] > 0 and t.user_attrs["latency_p50_ms"] > 0
    # Bigger matrices take longer: the measurements are real.
    by_size = {t.user_attrs["config"]["size"]: t.user_attrs["latency_p50_ms"] for t in trials}
    assert by_size[128] > by_size[32]
    assert not any((in_tmp / f).exists() for f in ("pwned", "pwned2", "pwned3"))
    assert out.pick is not None


def test_metrics_file_and_the_literal_argv(in_tmp: Path) -> None:
    d = spec_dict(in_tmp, metrics_file="{trial_dir}/out.json")
    d["command"]["argv"] += ["--out", "{trial_dir}/out.json"]
    d["command"]["metrics"]["requests_s"] = "results.throughput"
    run(spec_from_dict(d), progress=QUIET)
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["requests_s"] > 0 for t in _trials())


def test_argv_arrives_unchanged(tmp_path: Path) -> None:
    from autotuner.runners.base import Device

    spec = spec_from_dict(spec_dict(tmp_path, metrics={"throughput_items_s": "results.throughput"}))
    from autotuner.backends.command_runner import CommandRunner, last_json

    runner = CommandRunner(spec, {"backend": "command", "size": 8, "label": HOSTILE}, Device("cpu", (0,)))
    import subprocess

    from autotuner.backends.command_runner import render

    values = {"size": 8, "label": HOSTILE, "model": "m", "trial_dir": str(tmp_path)}
    argv = [render(a, values) for a in runner.settings.argv]
    echoed = last_json(subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True).stdout)
    assert echoed["label"] == HOSTILE and echoed["argv"][3] == HOSTILE
    assert runner.run_workload()["throughput_items_s"] > 0


def test_non_zero_exit_fails_with_the_stderr_tail(in_tmp: Path) -> None:
    d = spec_dict(in_tmp)
    d["command"]["argv"].append("--fail")
    run(spec_from_dict(d), progress=QUIET)
    for t in _trials():
        assert t.state == TrialState.FAIL and t.user_attrs["failure_class"] == "error"
        assert "exited 3" in t.user_attrs["failure_message"]
        assert "the device is not ready" in t.user_attrs["failure_message"]


def test_a_missing_program_is_refused_before_a_study(in_tmp: Path) -> None:
    # Every config of the space is refused before launch: a spec error, not a study of refusals.
    d = spec_dict(in_tmp)
    d["command"]["argv"][0] = "no-such-benchmark-program"
    with pytest.raises(SpecError) as e:
        run(spec_from_dict(d), progress=QUIET)
    assert "no config of the space can run here" in str(e.value)
    assert "program 'no-such-benchmark-program' is not on PATH here" in str(e.value)
    assert not (in_tmp / "studies").exists()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            lambda d: d["command"]["argv"].append("{nope}"),
            "command.argv[8]: {nope} is not a parameter; allowed: backend, label, model, size, trial_dir",
        ),
        (lambda d: d.pop("command"), "command: required when space.backend includes command"),
        (lambda d: d["command"]["metrics"].update({"speed": "a.b"}), "unknown metric 'speed'"),
        (lambda d: d["command"]["metrics"].update({"requests_s": "a..b"}), "is not a dotted path"),
        (lambda d: d["command"].update({"argv": "python bench.py"}), "command.argv"),
    ],
)
def test_bad_command_sections(tmp_path: Path, change, needle: str) -> None:  # noqa: ANN001
    d = spec_dict(tmp_path)
    change(d)
    with pytest.raises(SpecError) as e:
        spec_from_dict(d, "cmd.yaml")
    assert needle in str(e.value)


def test_export_prints_the_vllm_serve_line(in_tmp: Path) -> None:
    d = spec_dict(in_tmp)
    d["model"] = {"external": "facebook/opt-125m"}
    d["space"] = {
        "backend": "command",
        "block_size": [16],
        "max_num_seqs": [8],
        "dtype": ["bfloat16"],
        "enforce_eager": [True],
    }
    d["command"]["argv"] = [
        sys.executable,
        "bench_script.py",
        "--size",
        "16",
        "--label",
        "{model} {block_size} {max_num_seqs} {dtype}",
    ]
    d["budget"] = {"trials": 1}
    run(spec_from_dict(d), progress=QUIET)
    from autotuner.api import export

    line = export("cmd", fmt="vllm")
    assert line == (
        "vllm serve facebook/opt-125m --block-size 16 --max-num-seqs 8 --dtype bfloat16 --enforce-eager"
    )


def test_lookup_paths_and_aggregates() -> None:
    import math

    from autotuner.backends.command_runner import lookup

    data = {"a": {"b": [1, 2, 3]}, "t": [{"latencyMs": 1.0}, {"latencyMs": 3.0}, {"latencyMs": 2.0}]}
    assert lookup(data, "a.b.1") == 2.0
    assert lookup(data, "median:t.*.latencyMs") == 2.0 and lookup(data, "max:t.*.latencyMs") == 3.0
    assert lookup(data, "count:t.*") == 3.0
    assert math.isnan(lookup(data, "a.missing")) and math.isnan(lookup(data, "a.b"))
