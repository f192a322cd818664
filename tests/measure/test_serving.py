"""The serving scenario: the dynamic batcher against what servers get wrong, the load, the
max-rate bisection, the spec's errors, and one real study.

The batcher's rules (when a batch is due) run on a fake clock, so they are read off exact times;
its other properties run on a fake instance whose step sleeps a fixed time per batch (real
threads) and assert no upper bound on a time, which a loaded machine would break by chance (those
are measured by benchmarks/batcher_timing.py). One test serves the real tiny transformer through
the worker, and one runs autotuner.api.run.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from helpers import write_spec
from optuna.trial import TrialState

from autotuner.api import load_spec, run
from autotuner.errors import SpecError
from autotuner.measure.arrivals import from_trace, poisson
from autotuner.measure.batcher import ACCEPTED, CLOSED, Batcher, Request
from autotuner.measure.serving import Lane, Server, find_max_rate, meets_slo, split_cores, summarize
from autotuner.metrics import SERVING_METRICS
from autotuner.progress import Progress

QUIET = Progress(quiet=True)


class FakeModel:
    """An instance whose batch of n rows takes `per_batch_s` (whatever n): a known capacity."""

    def __init__(self, per_batch_s: float) -> None:
        self.per_batch_s = per_batch_s
        self.sizes: list[int] = []
        self.threads: set[int] = set()

    def setup(self) -> None:
        self.threads.add(threading.get_native_id())

    def run(self, rows: int) -> None:
        self.sizes.append(rows)
        time.sleep(self.per_batch_s)


def server(models: list[FakeModel], max_batch: int, timeout_ms: float, queue_limit: int = 1024) -> Server:
    lanes = [Lane(m, None, lambda inst: None) for m in models]
    s = Server(lanes, max_batch, timeout_ms / 1e3, queue_limit)
    s.start()
    return s


class FakeClock:
    """Seconds that move only when the test says: the batcher's rules read off exact times."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _submit(batcher: Batcher, clock: FakeClock, at: float, ids: range) -> list[Request]:
    clock.t = at
    requests = [Request(i, at) for i in ids]
    assert all(batcher.submit(r) == ACCEPTED for r in requests)
    return requests


def test_a_batch_is_sent_at_its_timeout_not_before_and_not_after() -> None:
    clock = FakeClock()
    b = Batcher(max_batch_size=8, timeout_s=0.020, queue_limit=1024, clock=clock)
    first = _submit(b, clock, 0.000, range(0, 1)) + _submit(b, clock, 0.005, range(1, 3))
    clock.t = 0.0199
    assert b.poll() is None, "a batch that has not filled waits for its oldest request's timeout"
    clock.t = 0.020
    assert b.poll() == first and [r.row for r in first] == [0, 1, 2] and first[0].batch == 0
    # A full batch goes at once; the rest waits for its own oldest request's timeout.
    full = _submit(b, clock, 1.000, range(3, 12))
    assert b.poll() == full[:8] and all(r.batch == 1 for r in full[:8])
    clock.t = 1.0199
    assert b.poll() is None
    clock.t = 1.020
    assert b.poll() == full[8:]
    # The load ends: what is queued is drained without waiting, then take() returns None.
    last = _submit(b, clock, 2.000, range(12, 14))
    b.close()
    assert b.submit(Request(99, 2.0)) == CLOSED
    assert b.take() == last and b.take() is None


def test_timeout_zero_takes_what_is_queued_at_once() -> None:
    clock = FakeClock()
    b = Batcher(max_batch_size=8, timeout_s=0.0, queue_limit=1024, clock=clock)
    one = _submit(b, clock, 0.5, range(0, 1))
    assert b.poll() == one
    three = _submit(b, clock, 0.6, range(1, 4))
    assert b.poll() == three and b.poll() is None


def test_take_waits_for_the_timeout_on_real_threads() -> None:
    """The wait itself, on real threads: a batch that does not fill is never sent early (a lower
    bound, which a loaded machine cannot break; how late it may be is benchmarks/batcher_timing.py)."""
    s = server([FakeModel(0.001)], max_batch=8, timeout_ms=20)
    try:
        accepted, _ = s.run_open(poisson(20.0, 1.0, 10_000, seed=1))
    finally:
        s.stop()
    firsts = [r for r in accepted if r.row == 0]
    sizes = {b: sum(1 for r in accepted if r.batch == b) for b in {r.batch for r in accepted}}
    last = max(sizes)
    unfilled = [r.started_s - r.enqueued_s for r in firsts if sizes[r.batch] < 8 and r.batch != last]
    assert len(accepted) > 5 and unfilled
    assert min(unfilled) >= 0.020 - 1e-4


@pytest.mark.parametrize("instances", [1, 2])
def test_overload_loses_nothing_answers_once_in_order_and_counts_rejections(instances: int) -> None:
    # 2000 requests/s against 4 rows per 5 ms per instance (800/s each): the queue fills.
    models = [FakeModel(0.005) for _ in range(instances)]
    s = server(models, max_batch=4, timeout_ms=1, queue_limit=40)
    arrivals = poisson(2000.0, 0.8, 10_000, seed=3)
    try:
        accepted, batcher = s.run_open(arrivals)
    finally:
        s.stop()
    m = summarize(accepted, batcher, None, 0.0)
    assert batcher.rejected > 0 and m["rejected_requests"] == batcher.rejected
    assert len(accepted) + batcher.rejected == len(arrivals), "every arrival is answered or rejected"
    assert all(r.answers == 1 for r in accepted), "no request is lost or answered twice"
    assert max(sz for mod in models for sz in mod.sizes) <= 4
    assert m["queue_depth_max"] <= 40
    by_batch: dict[int, list[Request]] = {}
    for r in accepted:
        by_batch.setdefault(r.batch, []).append(r)
    assert sum(len(b) for b in by_batch.values()) == sum(sum(mod.sizes) for mod in models)
    previous_last = -1
    for b in sorted(by_batch):
        rows = sorted(by_batch[b], key=lambda r: r.row)
        assert [r.row for r in rows] == list(range(len(rows)))
        ids = [r.id for r in rows]
        assert ids == sorted(ids), "answered in arrival order within the batch"
        assert ids[0] > previous_last, "batches are formed oldest first"
        previous_last = ids[-1]
    # Overloaded, the batcher fills its batches.
    assert m["mean_batch_size"] > 3


def test_closed_loop_keeps_concurrency_requests_in_flight() -> None:
    s = server([FakeModel(0.004)], max_batch=8, timeout_ms=0)
    try:
        accepted, batcher = s.run_closed(3, duration_s=0.5, limit=10_000)
    finally:
        s.stop()
    assert len(accepted) > 50 and batcher.rejected == 0
    assert max(batcher.depths) <= 3
    assert all(r.answers == 1 for r in accepted)
    m = summarize(accepted, batcher, None, 0.0)
    # Three in flight, 4 ms per batch of up to three: about 750 requests/s, never above.
    assert m["requests_s"] < 3 / 0.004 * 1.05


def test_closed_loop_stops_at_its_request_count() -> None:
    s = server([FakeModel(0.001)], max_batch=2, timeout_ms=0)
    try:
        accepted, _ = s.run_closed(4, duration_s=30, limit=25)
    finally:
        s.stop()
    assert len(accepted) == 25


class MeetingModel(FakeModel):
    """Its first batch waits until every instance sharing the barrier is inside its own first
    batch: instances that served one after another never meet, and the barrier breaks."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__(0.001)
        self.barrier = barrier
        self.met = False

    def run(self, rows: int) -> None:
        if not self.sizes:
            self.barrier.wait(timeout=60)  # a bound on a failure, not a timing: never reached when it works
            self.met = True
        super().run(rows)


def test_instances_run_in_their_own_threads_at_once() -> None:
    barrier = threading.Barrier(2)
    models = [MeetingModel(barrier), MeetingModel(barrier)]
    s = server(models, max_batch=1, timeout_ms=0)
    try:
        accepted, _ = s.run_open(np.zeros(20))  # all at once: batches of one
    finally:
        s.stop()
    assert len(accepted) == 20 and all(m.sizes for m in models)
    assert all(m.met for m in models), "two instances serve at once, not one after the other"
    assert models[0].threads != models[1].threads
    assert split_cores((0, 1, 2, 3, 4), 2) == [(0, 1), (2, 3)]


def test_each_instance_thread_is_pinned_to_its_own_cores() -> None:
    import os

    seen: list[set[int]] = []

    class Pinned(FakeModel):
        def setup(self) -> None:
            seen.append(os.sched_getaffinity(0))  # this thread's mask

    cores = sorted(os.sched_getaffinity(0))[:2]
    lanes = [Lane(Pinned(0.0), c, lambda inst: None) for c in split_cores(cores, len(cores))]
    s = Server(lanes, 1, 0.0, 8)
    s.start()
    s.stop()
    assert seen == [{c} for c in cores]
    assert os.sched_getaffinity(0) >= set(cores), "the caller keeps its own mask"


def test_a_failed_setup_is_raised_and_nothing_hangs() -> None:
    class Broken(FakeModel):
        def setup(self) -> None:
            raise RuntimeError("no model")

    s = Server(
        [Lane(Broken(0.0), None, lambda inst: None), Lane(FakeModel(0.0), None, lambda i: None)], 1, 0, 8
    )
    with pytest.raises(RuntimeError, match="no model"):
        s.start()
    s.stop()


def test_bisection_finds_a_known_threshold() -> None:
    seen: list[float] = []

    def passes(rate: float) -> bool:
        seen.append(rate)
        return rate <= 37.0

    found = find_max_rate(passes, 1.0, 1000.0, steps=8)
    # Geometric halving: after 8 steps the bracket is 1000 ** (1 / 256) wide (2.7 %).
    assert 37.0 / 1000 ** (1 / 256) <= found <= 37.0
    assert len(seen) == 10
    assert find_max_rate(lambda r: False, 1.0, 10.0, 3) == 0.0
    assert find_max_rate(lambda r: True, 1.0, 10.0, 3) == 10.0


def test_bisection_on_a_fake_server_stays_below_its_capacity() -> None:
    # One instance, one row per 10 ms: 100 requests/s at most. Above it the queue grows without
    # bound and the p95 misses any SLO; well below it queueing is short.
    s = server([FakeModel(0.010)], max_batch=1, timeout_ms=0, queue_limit=64)
    try:

        def passes(rate: float) -> bool:
            return meets_slo(*s.run_open(poisson(rate, 1.0, 10_000, seed=4)), 80.0, 0.1)

        found = find_max_rate(passes, 10.0, 400.0, steps=3)
    finally:
        s.stop()
    assert 20.0 <= found < 110.0, found  # 63/s passes when idle; a loaded machine may stop at 25


def test_arrivals_are_seeded_and_bounded(tmp_path: Path) -> None:
    a, b = poisson(100.0, 2.0, 10_000, seed=5), poisson(100.0, 2.0, 10_000, seed=5)
    assert np.array_equal(a, b) and a[0] == 0 and a[-1] <= 2.0 and 150 < len(a) < 250
    assert len(poisson(100.0, 2.0, 50, seed=5)) == 50
    rows = [{"arrival_s": 1.0}, {"arrival_s": 0.5}, {"arrival_s": 9.0}]
    assert list(from_trace(rows, 5.0, 100)) == [0.0, 0.5]


# --- the spec -----------------------------------------------------------------------------

SERVING_SPACE = {
    "backend": ["torch-eager", "onnxruntime-cpu"],
    "max_batch_size": [1, 4],
    "batch_timeout_ms": [0, 2],
    "instances": [1],
    "threads": [1],
}


def serving_spec(tmp_path: Path, **overrides: Any) -> Path:
    d: dict[str, Any] = {
        "scenario": "serving",
        "serving": {"rate_rps": 100, "duration_s": 0.6, "slo_p95_ms": 50},
        "space": SERVING_SPACE,
        "objectives": [{"metric": "request_latency_p95_ms", "direction": "minimize"}],
        "constraints": ["accuracy_cosine >= 0.99"],
        "budget": {"trials": 2},
        "pick": {"top_k": 1, "rounds": 0},
    }
    d.update(overrides)
    return write_spec(tmp_path, **d)


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(path)
    text = str(e.value)
    assert "\n" not in text and e.value.exit_code == 2
    return text.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("serving", "expected"),
    [
        ({"rate_rps": 0}, "serving.rate_rps: "),
        ({"rate_rps": -5}, "serving.rate_rps: "),
        ({"slo_p95_ms": 20}, "serving.slo_p95_ms: needs a load to be measured at"),
        ({"rate_rps": 5, "concurrency": 2}, "serving.concurrency: give one load"),
        ({"max_rate": {"low": 5, "high": 50}}, "serving.max_rate: searches the highest rate"),
        (
            {"slo_p95_ms": 9, "max_rate": {"low": 50, "high": 5}},
            "serving.max_rate.low: 50 must be below high",
        ),
        ({"trace": "missing.jsonl"}, "serving.trace: cannot read"),
    ],
)
def test_bad_serving_sections(tmp_path: Path, serving: dict[str, Any], expected: str) -> None:
    assert error_of(serving_spec(tmp_path, serving=serving)).startswith(expected)


def test_a_malformed_trace_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"arrival_s": 0}\n{"arrival_s": "soon"}\n')
    msg = error_of(serving_spec(tmp_path, serving={"trace": "t.jsonl"}))
    assert msg.startswith("serving.trace: ") and "line 2: expected a JSON object with arrival_s" in msg
    (tmp_path / "t.jsonl").write_text('{"arrival_s": 0}\n{"arrival_s": -1}\n')
    assert "line 2: arrival_s must be a number of at least 0" in error_of(
        serving_spec(tmp_path, serving={"trace": "t.jsonl"})
    )
    (tmp_path / "t.jsonl").write_text('{"arrival_s": 0.5, "prompt_len": 3, "output_len": 4}\n')
    assert load_spec(serving_spec(tmp_path, serving={"trace": "t.jsonl"})).serving.trace == "t.jsonl"


def test_serving_knobs_need_the_serving_scenario(tmp_path: Path) -> None:
    space = {"backend": ["torch-eager"], "batch_size": [1], "instances": [1, 2]}
    msg = error_of(write_spec(tmp_path, space=space))
    assert msg == "space.instances: applies to scenario: serving (with a serving section)"
    assert (
        error_of(write_spec(tmp_path, serving={"rate_rps": 5}))
        == "serving: applies only with scenario: serving"
    )
    assert error_of(write_spec(tmp_path, scenario="serving")).startswith(
        "serving: required when scenario is serving"
    )
    msg = error_of(serving_spec(tmp_path, space={**SERVING_SPACE, "batch_size": [1, 2]}))
    assert msg.startswith("space.batch_size: the serving scenario batches requests itself")


def test_a_batch_of_one_never_waits(tmp_path: Path, caps: dict[str, Any]) -> None:
    fixed = {**SERVING_SPACE, "max_batch_size": 1, "batch_timeout_ms": 5}
    assert error_of(serving_spec(tmp_path, space=fixed)).startswith(
        "space.batch_timeout_ms: applies when max_batch_size"
    )
    spec = load_spec(serving_spec(tmp_path))  # the combination is a refused trial instead
    from autotuner.runners.registry import runner_for

    cls = runner_for("torch-eager")
    reason = cls.check(spec, {"backend": "torch-eager", "max_batch_size": 1, "batch_timeout_ms": 2}, caps)
    assert reason is not None and "batch_timeout_ms applies when max_batch_size is above 1" in reason
    assert (
        cls.check(spec, {"backend": "torch-eager", "max_batch_size": 4, "batch_timeout_ms": 2}, caps) is None
    )
    too_many = cls.check(spec, {"backend": "torch-eager", "instances": 3, "threads": 2}, caps)
    assert too_many == "instances=3 needs a core each; the trial holds 2" or int(caps["cpu_cores"]) < 2


# --- real models ----------------------------------------------------------------------------


def test_the_worker_serves_the_real_model_at_a_rate(tmp_path: Path, caps: dict[str, Any]) -> None:
    from autotuner.measure.worker import run_trial
    from autotuner.runners.base import Device

    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps({"arrival_s": 0.004 * i}) for i in range(120)))
    spec = load_spec(serving_spec(tmp_path, serving={"trace": "trace.jsonl", "slo_p95_ms": 1000}))
    config = {"backend": "torch-eager", "max_batch_size": 4, "batch_timeout_ms": 2, "threads": 1}
    result = run_trial(spec, config, Device("cpu", (0,)), caps)
    assert result.ok, result.failure_message
    m = result.metrics
    assert set(SERVING_METRICS) <= set(m) and m["accuracy_cosine"] > 0.99
    assert m["rejected_requests"] == 0 and 1 <= m["mean_batch_size"] <= 4
    assert m["request_latency_p50_ms"] <= m["request_latency_p95_ms"] <= m["request_latency_p99_ms"]
    assert m["goodput_requests_s"] == pytest.approx(m["requests_s"])
    assert len(result.latency_samples_ms) > 50


def test_a_serving_study_stores_the_serving_metrics(in_tmp: Path) -> None:
    path = serving_spec(
        in_tmp,
        serving={
            "rate_rps": 80,
            "duration_s": 0.6,
            "slo_p95_ms": 200,
            "max_rate": {"low": 20, "high": 400, "steps": 1, "duration_s": 0.4},
        },
        space={
            **SERVING_SPACE,
            "backend": ["onnxruntime-cpu"],
            "max_batch_size": [4],
            "batch_timeout_ms": [0, 2],
        },
        objectives=[{"metric": "max_rate_rps", "direction": "maximize"}],
        sampler={"type": "grid"},
    )
    run(path, progress=QUIET)
    trials = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db").trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2, [(t.state, t.user_attrs.get("failure_message")) for t in trials]
    for t in done:
        for name in (*SERVING_METRICS, "goodput_requests_s", "max_rate_rps"):
            assert isinstance(t.user_attrs[name], float), name
        assert 20 <= t.user_attrs["max_rate_rps"] <= 400
        # The rate/latency curve: the fixed rate and every probe of the bisection, in rate order.
        curve = t.user_attrs["info"]["rate_curve"]
        rates = [p["offered_rps"] for p in curve]
        assert rates == sorted(rates) and {20.0, 80.0} <= set(rates)
        for p in curve:
            assert p["request_latency_p50_ms"] <= p["request_latency_p95_ms"] <= p["request_latency_p99_ms"]
    # The report plots it for the top candidates.
    assert "request latency against offered rate" in (in_tmp / "reports" / "t.html").read_text()
