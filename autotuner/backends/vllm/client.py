"""The load client of the vllm runner: streamed /v1/completions requests at their arrival times,
timed per chunk, and the server's Prometheus /metrics read beside them. Standard library only.

Prompts are token ids (the built-in model has no tokenizer; the server runs
--skip-tokenizer-init), so each streamed chunk carries its token ids (`return_token_ids`) and
the count of generated tokens is exact. A chunk may hold more than one token: every token of a
chunk arrives at the chunk's time, as in `vllm bench serve` (ITL is measured between chunks).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

MODEL_NAME = "autotune-model"  # --served-model-name of every server the runner starts


@dataclass
class RequestTiming:
    """One request as the client saw it: when it was sent, when each chunk of tokens came."""

    sent_s: float = 0.0
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival, tokens in it)
    done_s: float = 0.0
    output_tokens: int = 0  # from the usage chunk (else the chunks' count)
    token_ids: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        return (self.chunks[0][0] - self.sent_s) * 1e3 if self.chunks else None

    @property
    def e2e_ms(self) -> float:
        return (self.done_s - self.sent_s) * 1e3

    @property
    def tpot_ms(self) -> float | None:
        """(e2e - ttft) / (output tokens - 1), vLLM's definition, from the last token's arrival."""
        if not self.chunks or self.output_tokens < 2:
            return None
        return (self.chunks[-1][0] - self.chunks[0][0]) * 1e3 / (self.output_tokens - 1)

    def itl_ms(self) -> list[float]:
        return [(b[0] - a[0]) * 1e3 for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


def sse_events(lines: Iterable[bytes]) -> Iterator[dict[str, Any] | None]:
    """The JSON objects of a server-sent-event stream, one per `data:` line; None for [DONE]."""
    for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            yield None
            return
        yield json.loads(data)


def completion_body(prompt: list[int], max_tokens: int, stream: bool) -> dict[str, Any]:
    """A greedy completion of exactly max_tokens tokens (ignore_eos: random weights end early)."""
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "return_token_ids": True,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _connection(url: str, timeout_s: float) -> http.client.HTTPConnection:
    u = urlsplit(url)
    return http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout_s)


def stream_one(url: str, prompt: list[int], max_tokens: int, timeout_s: float) -> RequestTiming:
    """Send one streamed completion now and time its chunks."""
    t = RequestTiming()
    conn = _connection(url, timeout_s)
    try:
        payload = json.dumps(completion_body(prompt, max_tokens, stream=True)).encode()
        t.sent_s = time.perf_counter()
        conn.request("POST", "/v1/completions", body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            t.error = f"HTTP {resp.status}: {resp.read()[:300].decode(errors='replace')}"
            t.done_s = time.perf_counter()
            return t
        for event in sse_events(iter(resp.readline, b"")):
            now = time.perf_counter()
            if event is None:
                break
            if event.get("error"):
                t.error = str(event["error"])[:300]
                break
            for choice in event.get("choices") or []:
                ids = list(choice.get("token_ids") or [])
                if ids:
                    t.chunks.append((now, len(ids)))
                    t.token_ids.extend(ids)
            usage = event.get("usage")
            if usage:
                t.output_tokens = int(usage.get("completion_tokens") or 0)
        t.done_s = time.perf_counter()
        if not t.output_tokens:
            t.output_tokens = len(t.token_ids)
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as e:
        t.error = f"{type(e).__name__}: {e}"
        t.done_s = time.perf_counter()
    finally:
        conn.close()
    return t


def complete(url: str, prompt: list[int], max_tokens: int, timeout_s: float) -> list[int]:
    """One greedy completion, not streamed: its token ids (the accuracy check)."""
    conn = _connection(url, timeout_s)
    try:
        payload = json.dumps(completion_body(prompt, max_tokens, stream=False)).encode()
        conn.request("POST", "/v1/completions", body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:300].decode(errors='replace')}")
        return [int(x) for x in json.loads(body)["choices"][0]["token_ids"]]
    finally:
        conn.close()


def run_load(
    url: str,
    prompts: list[list[int]],
    output_lens: list[int],
    arrivals_s: list[float],
    timeout_s: float,
    concurrency: int | None = None,
) -> tuple[list[RequestTiming], float]:
    """Send each request at its arrival time (seconds from the start), one thread each at most
    256 at once; their timings in order, and the wall time from the first send to the last answer.
    With `concurrency`, at most that many requests are in flight: request i goes at its arrival
    or when a slot frees, whichever is later, in order (vllm bench serve's --max-concurrency);
    with every arrival at 0 that is a closed loop of `concurrency` clients."""
    n = len(prompts)
    results: list[RequestTiming | None] = [None] * n
    t0 = time.perf_counter()

    def one(i: int) -> None:
        delay = arrivals_s[i] - (time.perf_counter() - t0)
        if delay > 0:
            time.sleep(delay)
        results[i] = stream_one(url, prompts[i], output_lens[i], timeout_s)

    with ThreadPoolExecutor(max_workers=max(1, min(256, n, concurrency or n))) as pool:
        list(pool.map(one, range(n)))
    done = [r for r in results if r is not None]
    wall = max((r.done_s for r in done), default=t0) - min((r.sent_s for r in done), default=t0)
    return done, max(wall, 1e-9)


def serving_metrics(
    timings: list[RequestTiming],
    wall_s: float,
    prompt_tokens: int,
    slo_ttft_ms: float | None,
    slo_tpot_ms: float | None,
) -> dict[str, float]:
    """TTFT, TPOT, ITL, e2e percentiles, throughput and goodput of the answered requests."""
    ok = [t for t in timings if t.error is None and t.chunks]
    ttft = [t.ttft_ms for t in ok if t.ttft_ms is not None]
    tpot = [x for t in ok if (x := t.tpot_ms) is not None]
    itl = [x for t in ok for x in t.itl_ms()]
    e2e = [t.e2e_ms for t in ok]
    generated = sum(t.output_tokens for t in ok)

    def good(t: RequestTiming) -> bool:
        if slo_ttft_ms is not None and (t.ttft_ms is None or t.ttft_ms > slo_ttft_ms):
            return False
        tp = t.tpot_ms
        return slo_tpot_ms is None or tp is None or tp <= slo_tpot_ms

    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) if xs else math.nan

    return {
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p95_ms": pct(ttft, 95),
        "tpot_p50_ms": pct(tpot, 50),
        "tpot_p95_ms": pct(tpot, 95),
        "itl_p50_ms": pct(itl, 50),
        "itl_p95_ms": pct(itl, 95),
        "e2e_p50_ms": pct(e2e, 50),
        "e2e_p95_ms": pct(e2e, 95),
        "output_tokens_s": generated / wall_s,
        "total_tokens_s": (generated + prompt_tokens) / wall_s,
        "requests_s": len(ok) / wall_s,
        "goodput_requests_s": sum(1 for t in ok if good(t)) / wall_s,
        "failed_requests": float(len(timings) - len(ok)),
    }


def max_rate_rps(
    url: str,
    prompts: list[list[int]],
    output_lens: list[int],
    low: float,
    high: float,
    steps: int,
    duration_s: float,
    slo_ttft_ms: float | None,
    slo_tpot_ms: float | None,
    timeout_s: float,
    seed: int,
) -> tuple[float, list[dict[str, float]]]:
    """The highest Poisson arrival rate in [low, high] whose p95 TTFT and p95 TPOT meet the SLOs,
    by geometric bisection against the running server (no restart between rates): high first,
    then low, then `steps` midpoints. Each probe sends max(8, rate x duration_s) of the workload's
    requests (cycled). Returns the rate (0: not even low) and every probe's figures."""
    rng = np.random.default_rng(seed)
    probes: list[dict[str, float]] = []

    def meets(rate: float) -> bool:
        n = max(8, round(rate * duration_s))
        idx = [i % len(prompts) for i in range(n)]
        gaps = rng.exponential(1.0 / rate, size=n)
        arrivals = (np.cumsum(gaps) - gaps[0]).tolist()
        timings, wall = run_load(
            url, [prompts[i] for i in idx], [output_lens[i] for i in idx], arrivals, timeout_s
        )
        m = serving_metrics(timings, wall, 0, slo_ttft_ms, slo_tpot_ms)
        ok = m["failed_requests"] == 0
        if slo_ttft_ms is not None:
            ok = ok and m["ttft_p95_ms"] <= slo_ttft_ms
        if slo_tpot_ms is not None:
            ok = ok and m["tpot_p95_ms"] <= slo_tpot_ms
        probes.append({"rate_rps": rate, "ttft_p95_ms": m["ttft_p95_ms"], "tpot_p95_ms": m["tpot_p95_ms"],
                       "meets": float(ok)})  # fmt: skip
        return ok

    if meets(high):
        return high, probes
    if not meets(low):
        return 0.0, probes
    lo, hi = low, high
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return lo, probes


# ---- the server's Prometheus metrics ------------------------------------------------------------


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition -> metric name (labels dropped) -> the sum over its series.
    Comment lines and unparsable values are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m is None:
            continue
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


def read_metrics(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    conn = _connection(url, timeout_s)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        return parse_prometheus(resp.read().decode(errors="replace"))
    finally:
        conn.close()


GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting")
COUNTERS = (
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)


class MetricsSampler:
    """Reads /metrics every `every_s` in a thread while the load runs: the peak of the gauges
    (KV-cache use, running and waiting requests), and the counters' growth over the run."""

    def __init__(self, url: str, every_s: float = 0.1) -> None:
        self.url, self.every_s = url, every_s
        self.peaks: dict[str, float] = dict.fromkeys(GAUGES, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}

    def __enter__(self) -> MetricsSampler:
        self.before = read_metrics(self.url)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = read_metrics(self.url)
        self._take(self.after)

    def _take(self, m: dict[str, float]) -> None:
        for g in GAUGES:
            if g in m:
                self.peaks[g] = max(self.peaks[g], m[g])

    def _run(self) -> None:
        while True:  # a reading at once, then every every_s: a short load is seen too
            try:
                self._take(read_metrics(self.url))
            except (OSError, http.client.HTTPException):
                pass
            if self._stop.wait(self.every_s):
                return

    def result(self) -> dict[str, float]:
        grew = {c: self.after.get(c, 0.0) - self.before.get(c, 0.0) for c in COUNTERS}
        queries = grew["vllm:prefix_cache_queries_total"]
        return {
            "kv_cache_usage_peak_pct": 100.0 * self.peaks["vllm:kv_cache_usage_perc"],
            "requests_running_peak": self.peaks["vllm:num_requests_running"],
            "requests_waiting_peak": self.peaks["vllm:num_requests_waiting"],
            "preemptions": grew["vllm:num_preemptions_total"],
            "prefix_cache_hit_pct": (
                100.0 * grew["vllm:prefix_cache_hits_total"] / queries if queries > 0 else 0.0
            ),
            "server_generation_tokens": grew["vllm:generation_tokens_total"],
        }
