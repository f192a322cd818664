"""Every failure class, caused for real, is recorded as data and the study goes on."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import FAST_MEASUREMENT, PLAIN_RANDOM, write_spec
from optuna.trial import TrialState

from autotuner.api import run
from autotuner.progress import Progress


def test_each_failure_class_is_recorded_and_the_study_goes_on(in_tmp: Path) -> None:
    spec = write_spec(
        in_tmp,
        model={"factory": "models_for_tests:misbehaving"},
        inputs=[{"name": "x", "shape": ["batch", 16]}],
        space={
            "backend": ["torch-eager", "onnxruntime-cuda"],
            "batch_size": [1, 2, 3, 4, 5, 6],
            "threads": [1],
        },
        objectives=[{"metric": "throughput_items_s", "direction": "maximize"}],
        constraints=["accuracy_cosine >= 0.99"],
        sampler={"type": "grid"},
        budget={"trials": 12},
        # Long enough for a worker to start and measure on a loaded 2-core machine (at 8 s every
        # config timed out under a load average of 5); only batch 4, which hangs, waits it out.
        measurement={**FAST_MEASUREMENT, "trial_timeout_s": 30},
    )
    out = run(spec, progress=Progress(quiet=True))
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    by_config = {
        (t.user_attrs["config"]["backend"], t.user_attrs["config"]["batch_size"]): t for t in study.trials
    }
    # The grid ends when every config left is refused before launch: those are not stored.
    assert 8 <= len(study.trials) <= 12
    torch_cls = {bs: by_config[("torch-eager", bs)].user_attrs.get("failure_class") for bs in range(1, 7)}
    assert torch_cls == {1: None, 2: "crash", 3: "error", 4: "timeout", 5: "invalid-metric", 6: "oom"}
    assert "SIGSEGV" in by_config[("torch-eager", 2)].user_attrs["failure_message"]
    assert "refuses batches of three" in by_config[("torch-eager", 3)].user_attrs["failure_message"]
    assert "accuracy_cosine" in by_config[("torch-eager", 5)].user_attrs["failure_message"]
    # Measured failures are FAIL; the invalid metric keeps what was measured.
    for bs in range(2, 7):
        assert by_config[("torch-eager", bs)].state == TrialState.FAIL
    assert by_config[("torch-eager", 5)].user_attrs["latency_p50_ms"] > 0
    # A provider that is not here is refused before launch: PRUNED, infeasible, with the reason.
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        refused = [bs for bs in range(1, 7) if ("onnxruntime-cuda", bs) in by_config]
        assert refused, "the grid proposes the CUDA configs too"
        for bs in refused:
            t = by_config[("onnxruntime-cuda", bs)]
            assert t.state == TrialState.PRUNED
            assert t.user_attrs["failure_class"] == "unsupported"
            assert "CUDAExecutionProvider is not available" in t.user_attrs["failure_message"]
            assert t.constraints["runnable"] > 0
    # The one good config wins.
    assert out.pick is not None and out.pick.winner == by_config[("torch-eager", 1)].number
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_a_config_that_failed_before_is_stored_as_the_same_failure_free(
    in_tmp: Path, caps: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler proposes configs that already failed (queued here in the driver's own way,
    so that the order is known): none is launched again. An error is told again as the same
    failure (failed_before); the same config as an out-of-memory trial is that oom again; a larger
    batch with the same other settings is predicted-oom. The torch runner has no memory model:
    only the trials it ran can tell the driver about memory."""
    from autotuner import api
    from autotuner.search.space import sampled_params
    from autotuner.study import records as rec

    launches = in_tmp / "launches"
    monkeypatch.setenv("AUTOTUNE_TEST_LAUNCH_LOG", str(launches))
    spec = api.load_spec(
        write_spec(
            in_tmp,
            model={"factory": "models_for_tests:misbehaving"},
            inputs=[{"name": "x", "shape": ["batch", 16]}],
            space={"backend": ["torch-eager"], "batch_size": [1, 3, 6, 7, 8], "threads": [1]},
            objectives=[{"metric": "throughput_items_s", "direction": "maximize"}],
            constraints=[],
            sampler=PLAIN_RANDOM,
            pick={"rounds": 0},
        )
    )
    study = api.open_study(spec, caps=caps)
    order = [3, 6, 3, 6, 7, 1]
    for b in order:
        rec.queue(study, sampled_params(spec, {"backend": "torch-eager", "batch_size": b, "threads": 1}))
    with api.make_executor("local", spec, caps) as ex:
        api.search(spec, study, ex, trials=3, caps=caps)  # three measured: batch 3, 6 and 1
    # Three measured (batch 3, 6 and 1) fill the budget of three: the free ones take none of it.
    trials = [t for t in study.get_trials() if t.state != TrialState.WAITING]
    assert [t.user_attrs.get("config", {}).get("batch_size") for t in trials] == order
    error, oom, again, same_oom, bigger, good = trials
    assert error.user_attrs["failure_class"] == "error" and oom.user_attrs["failure_class"] == "oom"

    assert again.state == TrialState.FAIL and again.user_attrs["failed_before"] == error.number
    assert again.user_attrs["failure_class"] == "error"
    assert again.user_attrs["failure_message"].startswith(f"not run again: trial #{error.number} failed (")

    assert same_oom.state == TrialState.FAIL and same_oom.user_attrs["failure_class"] == "oom"
    assert same_oom.user_attrs["failure_message"].startswith(f"same config as trial #{oom.number}: ")
    assert same_oom.user_attrs["failed_before"] == oom.number  # so the budget does not count it

    assert bigger.state == TrialState.PRUNED and bigger.user_attrs["failure_class"] == "predicted-oom"
    assert bigger.user_attrs["failure_message"] == (
        f"trial #{oom.number} ran out of memory at batch_size=6 with the same other settings"
    )
    assert bigger.constraints == {"runnable": 1.0}  # infeasible, so that samplers steer away from it
    assert good.state == TrialState.COMPLETE

    # Free: no worker was launched for them, and no measurement is stored.
    # (A batch of 16 is the fp32 reference of the accuracy check, computed once in a child.)
    launched = sorted(int(line.split()[0]) for line in launches.read_text().splitlines())
    assert [b for b in launched if b != 16] == [1, 3, 6], launched
    for t in (again, same_oom, bigger):
        assert "measure_s" not in t.user_attrs and "latency_p50_ms" not in t.user_attrs
