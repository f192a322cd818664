"""The llm runner on a seeded tiny Llama, through real continuous batching on this CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from autotuner.api import run, spec_from_dict
from autotuner.progress import Progress
from autotuner.runners.base import Device

pytest.importorskip("transformers", reason="pip install -e '.[minilm]' brings transformers")
from autotuner.backends.llm.memory import memory_model  # noqa: E402
from autotuner.backends.llm.runner import LlmRunner  # noqa: E402

QUIET = Progress(quiet=True)
MODEL = {
    "builtin": "tiny-llama",
    "options": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 500},
}


def llm_spec(**over: Any) -> dict[str, Any]:
    d = {
        "name": "llm",
        "model": MODEL,
        "space": {
            "backend": "llm",
            "page_size": [8, 64],
            "batch_size": [8],
            "kv_budget_mb": 0.25,
            "threads": [1],
        },
        "objectives": [{"metric": "output_tokens_s", "direction": "maximize"}],
        "workload": {
            "requests": 12,
            "prompt_len": {"dist": "uniform", "low": 8, "high": 40},
            "output_len": 12,
        },
        "sampler": {"type": "grid"},
        "pick": {"rounds": 0},
    }
    d.update(over)
    return d


def measure(config: dict[str, Any], **over: Any) -> dict[str, float]:
    spec = spec_from_dict(llm_spec(**over))
    full = {"backend": "llm", "batch_size": 8, "kv_budget_mb": 0.25, "threads": 1, **config}
    return LlmRunner(spec, full, Device("cpu", (0,))).run_workload()


def test_page_size_moves_waste_and_the_kv_prediction_is_exact() -> None:
    small, big = measure({"page_size": 8}), measure({"page_size": 64})
    assert small["page_waste_pct"] < big["page_waste_pct"]
    for m, ps in ((small, 8), (big, 64)):
        assert m["kv_cache_mb"] == m["kv_predicted_mb"], ps  # exact, to the byte
        assert m["ttft_p50_ms"] > 0 and m["tpot_p50_ms"] > 0 and m["output_tokens_s"] > 0
        assert 1 <= m["concurrency_reached"] <= 8
        assert 0 < m["peak_pages_used"] <= m["kv_pages"]
    spec = spec_from_dict(llm_spec())
    pages = memory_model(spec, {"page_size": 8, "kv_budget_mb": 0.25})["pages"]
    assert small["kv_pages"] == pages


def test_a_tight_budget_limits_concurrency_or_preempts() -> None:
    roomy = measure({"page_size": 16, "kv_budget_mb": 1.0})
    tight = measure({"page_size": 16, "kv_budget_mb": 0.06})
    assert roomy["preemptions"] == 0
    assert tight["concurrency_reached"] < roomy["concurrency_reached"] or tight["preemptions"] > 0


def test_bf16_is_compared_with_the_fp32_reference() -> None:
    m = measure({"page_size": 16, "precision": "bf16"})
    assert 0.0 <= m["accuracy_token_agreement"] <= 1.0
    assert 0.0 < m["accuracy_max_logit_diff"] < 1.0


def test_trace_and_poisson_arrivals(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "\n".join(
            json.dumps({"prompt_len": 10 + i, "output_len": 6, "arrival_s": 0.05 * i}) for i in range(6)
        )
    )
    m = measure({"page_size": 16}, workload={"trace": str(trace)})
    assert m["requests_s"] > 0 and m["e2e_p50_ms"] > 0
    m = measure(
        {"page_size": 16}, workload={"requests": 6, "output_len": 6, "rate_rps": 50.0, "slo_ttft_ms": 1e-6}
    )
    assert m["goodput_requests_s"] == 0.0 and m["requests_s"] > 0


def test_study_with_a_predicted_oom_that_never_launches(in_tmp: Path) -> None:
    d = llm_spec()
    d["space"]["kv_budget_mb"] = [0.25, 10_000_000]  # 10 TB of KV cache: no machine has it
    d["space"]["page_size"] = [16]
    out = run(spec_from_dict(d), progress=QUIET)
    trials = optuna.load_study(study_name="llm", storage="sqlite:///studies/llm.db").trials
    by_budget = {t.user_attrs["config"]["kv_budget_mb"]: t for t in trials}
    oom = by_budget[10_000_000]
    assert oom.state == TrialState.PRUNED and oom.user_attrs["failure_class"] == "predicted-oom"
    assert "memory model predicts" in oom.user_attrs["failure_message"]
    assert oom.user_attrs.get("setup_s") is None, "it was never launched"
    ok = by_budget[0.25]
    assert ok.state == TrialState.COMPLETE and out.pick is not None
    # The total prediction against measured peak memory: the worker's RSS also holds Python,
    # torch and transformers, so the model is a floor, not the whole process.
    assert ok.user_attrs["predicted_memory_mb"] < ok.user_attrs["peak_memory_mb"]


def test_a_budget_below_one_request_is_an_oom_failure() -> None:
    from autotuner.measure.worker import classify

    with pytest.raises(RuntimeError) as e:
        measure({"page_size": 16, "kv_budget_mb": 0.01})
    assert classify(e.value).failure_class == "oom"


def test_a_local_hugging_face_directory(tmp_path: Path) -> None:
    from autotuner.models.builtins import tiny_llama

    tiny_llama(MODEL["options"]).save_pretrained(tmp_path / "llama")
    d = llm_spec(model={"hf": "llama"}, workload={"requests": 4, "prompt_len": 8, "output_len": 4})
    d["base_dir"] = str(tmp_path)
    spec = spec_from_dict(d)
    config = {"backend": "llm", "page_size": 16, "batch_size": 4, "kv_budget_mb": 0.25, "threads": 1}
    assert LlmRunner.check(spec, config, {"cpu_cores": 1}) is None
    m = LlmRunner(spec, config, Device("cpu", (0,))).run_workload()
    assert m["output_tokens_s"] > 0 and m["kv_cache_mb"] == m["kv_predicted_mb"]
