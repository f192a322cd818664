"""Metric names (units in the names) and their definitions, shared by spec, harness and report."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

METRICS: dict[str, str] = {
    "latency_p50_ms": "median wall time of one batch, after warm-up, device synchronized",
    "latency_p90_ms": "90th percentile of the per-batch latency samples",
    "latency_p95_ms": "95th percentile of the per-batch latency samples",
    "latency_p99_ms": "99th percentile of the per-batch latency samples",
    "latency_mean_ms": "mean of the per-batch latency samples",
    "latency_std_ms": "standard deviation of the per-batch latency samples",
    "latency_cv": "coefficient of variation (std / mean) of the latency samples",
    "throughput_items_s": "items (batch_size x iterations) divided by the summed batch latencies",
    "peak_memory_mb": (
        "peak memory of the trial's device (MiB). On a GPU: gpu_peak_memory_mb where NVML is available "
        "(for a workload runner only when it reports none of its own), else the runner's own figure "
        "(torch: max allocated; onnxruntime: the process's nvidia-smi use), else absent: host memory is "
        "never reported as GPU memory. On CPU: host_rss_mb. The llm runner on a GPU: gpu_peak_memory_mb "
        "over its run, like the command runner (torch_allocated_mb only where NVML reads nothing)"
    ),
    "torch_allocated_mb": (
        "the llm runner on a GPU: torch.cuda.max_memory_allocated over the run (MiB; no CUDA context, "
        "no allocator reserve), kept apart from peak_memory_mb"
    ),
    "host_rss_mb": "peak resident set size of the worker process (MiB)",
    # Device telemetry (autotuner.measure.telemetry), sampled every 50 ms; absent where unreadable;
    # a trial holding several GPUs (a command's resources.gpus) reads their sum.
    "gpu_peak_memory_mb": (
        "most device memory in use (NVML, whole GPU, sampled) during the timed window, minus the use "
        "before setup: weights, CUDA context, allocator caches and working memory, the same for every "
        "backend (a workload runner: over its whole run)"
    ),
    "gpu_util_pct": "mean NVML GPU utilisation (share of time a kernel ran) over the timed window",
    "sm_clock_mhz": "mean SM clock over the timed window",
    "power_w": (
        "mean power over the timed window: the GPU's (NVML energy counter, else sampled power integrated), "
        "or on CPU the packages' (RAPL, every core of the socket)"
    ),
    "energy_j_per_item": "the timed window's energy over the items run in it (batch: batch_size x "
    "n_iterations), joules per item in steady state (serving: power_w / the rate; LLM serving: per "
    "generated token, power_w / output_tokens_s over the served requests)",
    "gpu_throttle": (
        "NVML clock-event (throttle) reason bits seen in the timed window, OR-ed, idle bit dropped; 0: none"
    ),
    "usd_per_million_items": (
        "cost.usd_per_hour / 3600 / throughput * 1e6, throughput being output_tokens_s where the runner "
        "reports it (LLM serving: per million generated tokens), else throughput_items_s"
    ),
    "setup_s": "load + export + quantize + compile + first call, apart from steady state",
    "measure_s": "wall time spent in timed iterations",
    "worker_startup_s": "seconds from the driver asking for the block to the worker's main starting "
    "(a fresh interpreter's imports, or a fork of the warm zygote)",
    "n_iterations": "number of timed iterations",
    "unstable": "1 when the CV target was not met before the time or iteration limit, else 0",
    "foreign_load": "cores' worth of other processes' CPU time on the trial's cores during its block",
    "accuracy_cosine": "lowest per-sample cosine similarity of the outputs against the fp32 reference",
    "accuracy_max_abs_error": "largest absolute difference of any output element from the reference",
    "accuracy_top1": "share of samples whose argmax over the last output axis matches the reference",
    "accuracy_task": "accuracy.metric's task score of the outputs on the data's evaluation set",
    "accuracy_task_vs_fp32": (
        "accuracy_task over fp32's task score on the same evaluation set ('accuracy_task >= 0.98 * fp32')"
    ),
    # Serving metrics, as LLM engines and external benchmarks report them.
    "output_tokens_s": "generated tokens per second over the whole run",
    "total_tokens_s": "prompt plus generated tokens per second over the whole run",
    "requests_s": (
        "completed requests per second (serving scenario: requests answered / time from the first "
        "arrival to the last answer, warm-up left out)"
    ),
    "ttft_p50_ms": "median time to first token of a request",
    "ttft_p95_ms": "95th percentile time to first token",
    "tpot_p50_ms": "median time per output token after the first, per request: (e2e - ttft) / (tokens - 1)",
    "itl_p50_ms": "median inter-token latency, all gaps of all requests pooled",
    "e2e_p50_ms": "median end-to-end request latency",
    "e2e_p95_ms": "95th percentile end-to-end request latency",
    "tpot_p95_ms": "95th percentile time per output token",
    "goodput_requests_s": (
        "requests per second that met the SLOs: the workload's TTFT and TPOT (LLM serving), or an "
        "answer within serving.slo_p95_ms of the request's arrival (serving scenario)"
    ),
    # The serving scenario (timed runners behind the dynamic batcher, autotuner.measure.serving).
    "request_latency_p50_ms": (
        "median time from a request's scheduled arrival to its answer: queueing, batching wait and the "
        "batch's run"
    ),
    "request_latency_p95_ms": "95th percentile of the per-request latency (arrival to answer)",
    "request_latency_p99_ms": "99th percentile of the per-request latency (arrival to answer)",
    "mean_batch_size": "requests answered / batches run by the dynamic batcher",
    "queue_depth_p95": "95th percentile of the queue length an arriving request finds (itself included)",
    "queue_depth_max": "longest queue an arriving request found (itself included)",
    "rejected_requests": "arrivals refused because the queue held serving.queue_limit requests",
    "max_rate_rps": (
        "highest Poisson arrival rate in serving.max_rate that met slo_p95_ms (p95 of the per-request "
        "latency, a rejected request counting as a miss), found by bisection inside the trial; 0: none"
    ),
    "kv_cache_mb": "bytes the KV cache really allocated (MiB)",
    "kv_predicted_mb": "KV cache the memory model predicts for the budget and page size (MiB)",
    "predicted_memory_mb": "weights + KV budget + working memory, as the memory model predicts it (MiB)",
    "kv_pages": "pages (blocks of page_size tokens for every layer) the KV budget holds",
    "peak_pages_used": "most pages in use at once during the run (sampled every millisecond)",
    "page_waste_pct": "share of allocated KV slots left empty: sum(pages x page_size - tokens) / allocated",
    "preemptions": "requests evicted from the KV cache to make room (re-run or swapped back later)",
    "concurrency_reached": "most requests generating at the same time",
    "accuracy_token_agreement": "share of greedy tokens equal to the fp32 reference's, same prompts",
    "accuracy_max_logit_diff": "largest absolute difference of next-token logits from the fp32 reference",
    # The vllm runner (a real server per trial; its Prometheus /metrics sampled during the run).
    "startup_s": "seconds from starting the vLLM server to its first healthy /health (cold start)",
    "warmup_s": "seconds the warm-up (calls, or the vllm runner's requests) took before timing",
    "itl_p95_ms": "95th percentile inter-token latency (between streamed chunks), all requests pooled",
    "failed_requests": "requests that ended with an error (a trial with any fails as error)",
    "kv_cache_usage_peak_pct": "highest vllm:kv_cache_usage_perc seen during the run, in percent",
    "requests_running_peak": "highest vllm:num_requests_running seen during the run",
    "requests_waiting_peak": "highest vllm:num_requests_waiting seen during the run (queued for room)",
    "prefix_cache_hit_pct": "prefix-cache hits / queries (tokens) over the run, from the server's counters",
    "server_generation_tokens": "generated tokens by the server's own counter over the run (cross-check)",
}

# What every in-process trial (torch, onnxruntime: the shared harness) records.
HARNESS_METRICS = (
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "latency_std_ms",
    "latency_cv",
    "throughput_items_s",
    "peak_memory_mb",
    "host_rss_mb",
    "setup_s",
    "measure_s",
    "warmup_s",
    "worker_startup_s",
    "n_iterations",
    "unstable",
    "foreign_load",
    "accuracy_cosine",
    "accuracy_max_abs_error",
    "accuracy_top1",
)

DEFAULT_DIRECTION: dict[str, str] = {
    "throughput_items_s": "maximize",
    "accuracy_cosine": "maximize",
    "accuracy_top1": "maximize",
    "accuracy_task": "maximize",
    "accuracy_task_vs_fp32": "maximize",
    "output_tokens_s": "maximize",
    "total_tokens_s": "maximize",
    "requests_s": "maximize",
    "goodput_requests_s": "maximize",
    "max_rate_rps": "maximize",
    "accuracy_token_agreement": "maximize",
}


# What a serving-scenario trial records (max_rate_rps where serving.max_rate is given,
# goodput_requests_s where slo_p95_ms is).
SERVING_METRICS = (
    "request_latency_p50_ms",
    "request_latency_p95_ms",
    "request_latency_p99_ms",
    "requests_s",
    "mean_batch_size",
    "queue_depth_p95",
    "queue_depth_max",
    "rejected_requests",
)


# Metrics a spec may name only when it gives what they are computed from.
NEEDS_COST = frozenset({"usd_per_million_items"})


def usd_per_million_items(usd_per_hour: float, metrics: Mapping[str, float]) -> float | None:
    """What a million items (generated tokens for LLM serving) cost at the machine's hourly price."""
    rate = metrics.get("output_tokens_s", metrics.get("throughput_items_s"))
    if not is_number(rate) or rate <= 0:  # type: ignore[operator]
        return None
    return usd_per_hour / 3600.0 / float(rate) * 1e6  # type: ignore[arg-type]


def is_number(v: object) -> bool:
    """A finite int or float (not a bool): what a stored metric value must be to be used."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# Trial attributes that are not metrics (autotuner.study.records keeps the same names apart): a
# spec may not declare a metric by one of these names, which would overwrite the attribute.
RESERVED_NAMES = frozenset(
    {"config", "failure_class", "failure_message", "under_load", "latency_samples_ms", "info"}
    | {"pooled_from", "failed_before", "repeat_of", "load_retry", "retry_of", "drawn"}
)

# A spec's declared metrics (its `metrics:` section) as plain data: name -> {unit, direction,
# description}, each optional. The functions below take it where a declared metric may be named.
Declared = Mapping[str, Mapping[str, Any]]


def direction_of(metric: str, declared: Declared | None = None) -> str:
    """The metric's better direction: its declared hint, else the built-in default."""
    hint = (declared or {}).get(metric, {}).get("direction")
    return str(hint) if hint else DEFAULT_DIRECTION.get(metric, "minimize")


def names(declared: Iterable[str] = ()) -> list[str]:
    """Every metric a spec may name: the built-in ones, then its declared ones."""
    return [*METRICS, *(m for m in declared if m not in METRICS)]


def unit_of(metric: str, declared: Declared | None = None) -> str | None:
    """A declared metric's unit (a built-in one says its unit in its name)."""
    unit = (declared or {}).get(metric, {}).get("unit")
    return str(unit) if unit else None


def label(metric: str, declared: Declared | None = None) -> str:
    """The metric's name with its declared unit, for table headers and axes: 'mfu (%)'."""
    unit = unit_of(metric, declared)
    return f"{metric} ({unit})" if unit else metric


def definitions(declared: Declared | None = None) -> dict[str, str]:
    """What each metric means: the built-in definitions, then the declared ones with their unit
    and direction hint in words."""
    out = dict(METRICS)
    for name, d in (declared or {}).items():
        words = [str(d["description"])] if d.get("description") else ["declared by the spec"]
        if d.get("unit"):
            words.append(f"unit: {d['unit']}")
        if d.get("direction"):
            words.append(f"better: {'higher' if d['direction'] == 'maximize' else 'lower'}")
        out[name] = "; ".join(words)
    return out
