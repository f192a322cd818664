"""Every failure class, caused for real, is recorded as data and the study goes on."""

from __future__ import annotations

from pathlib import Path

import optuna
from helpers import FAST_MEASUREMENT, write_spec
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
        measurement={**FAST_MEASUREMENT, "trial_timeout_s": 8},
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
