"""The study package: a trial's result is one transaction, and the study opens in optuna-dashboard.

Real SQLite files and the real driver; the executor answers at once with a full result (every
metric of a harness trial), the collaborator these tests are not about.
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import PLAIN_RANDOM, make_spec_dict
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine

from autotuner import api
from autotuner.execution.base import Executor, TrialRequest
from autotuner.metrics import HARNESS_METRICS
from autotuner.result import TrialResult
from autotuner.search import tell
from autotuner.study import records

CAPS = {"cpu_cores": 2, "ort_providers": ["CPUExecutionProvider"], "cuda_devices": 0}


def _result(config: dict[str, Any]) -> TrialResult:
    bs = int(config["batch_size"])
    metrics = {m: 1.0 for m in HARNESS_METRICS}
    metrics.update(throughput_items_s=100.0 * bs, latency_p95_ms=2.0 + bs, accuracy_cosine=0.999)
    metrics.update(foreign_load=0.0, measure_s=0.5)
    return TrialResult(ok=True, metrics=metrics, latency_samples_ms=[1.0, 1.5, 2.0], info={"node": "here"})


class Instant(Executor):
    def submit(self, request: TrialRequest) -> Future[TrialResult]:
        fut: Future[TrialResult] = Future()
        fut.set_result(_result(request.config))
        return fut


def _spec(tmp: Path, **over: Any) -> Any:
    d = make_spec_dict(storage=f"sqlite:///{tmp / 'study.db'}", sampler=PLAIN_RANDOM, **over)
    return api.spec_from_dict(d, "test")


def test_a_trials_result_is_stored_in_one_transaction(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    study = api.open_study(spec, caps=CAPS)
    commits: list[int] = []
    trial = study.ask()
    config = {"backend": "torch-eager", "precision": "fp32", "batch_size": 2, "threads": 1}
    records.start(study, trial, config)

    def count(*_: Any) -> None:
        commits.append(1)

    event.listen(Engine, "commit", count)
    try:
        summary, failure = tell.record(spec, study, trial, _result({"batch_size": 2}))
    finally:
        event.remove(Engine, "commit", count)
    assert failure is None and "throughput_items_s=200" in summary
    assert len(commits) == 1, "attributes, constraints, values and state go in one transaction"
    t = optuna.load_study(study_name=spec.study_name, storage=spec.storage).trials[0]
    assert t.state == TrialState.COMPLETE and t.values == [200.0, 4.0]
    assert records.metric(t, "throughput_items_s") == 200.0 and records.samples(t) == [1.0, 1.5, 2.0]
    assert t.constraints == {"accuracy_cosine >= 0.99": pytest.approx(0.99 - 0.999)}
    assert t.user_attrs["info"] == {"node": "here"}


def test_a_refusal_and_a_failure_are_stored_the_way_samplers_read_them(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    study = api.open_study(spec, caps=CAPS)
    refused, failed = study.ask(), study.ask()
    tell.record(spec, study, refused, TrialResult.failure("unsupported", "not here"))
    tell.record(spec, study, failed, TrialResult.failure("crash", "worker died on SIGKILL"))
    a, b = optuna.load_study(study_name=spec.study_name, storage=spec.storage).trials
    assert a.state == TrialState.PRUNED and a.constraints == {records.RUNNABLE: 1.0}
    assert records.failure_class(a) == "unsupported" and records.failure_message(a) == "not here"
    assert b.state == TrialState.FAIL and records.failure_class(b) == "crash"
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        records.fail(study, failed, "error", "a finished trial is not written again")


def _get(app: Any, path: str) -> Any:
    out: dict[str, Any] = {}

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        out["status"] = status

    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http",
    }
    body = b"".join(app(env, start))
    assert out["status"].startswith("200"), (path, out["status"], body[:300])
    return json.loads(body)


def test_the_study_opens_in_optuna_dashboard_with_every_metric(tmp_path: Path) -> None:
    dashboard = pytest.importorskip("optuna_dashboard", reason="pip install optuna-dashboard")
    spec = _spec(tmp_path, budget={"trials": 5})
    study = api.open_study(spec, caps=CAPS)
    api.search(spec, study, Instant(spec, CAPS), caps=CAPS)
    app = dashboard.wsgi(optuna.storages.RDBStorage(spec.storage))
    listed = _get(app, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in listed] == [spec.study_name]
    detail = _get(app, f"/api/studies/{listed[0]['study_id']}")
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    measured = [t for t in complete if not any(a["key"] == records.POOLED_FROM for a in t["user_attrs"])]
    assert len(measured) == 5, "the budget's five measurements (repeats told the pooled value are free)"
    for t in measured:
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        for m in HARNESS_METRICS:
            assert m in attrs, f"{m} is not shown for trial {t['number']}"
        assert math.isclose(float(attrs["throughput_items_s"]), t["values"][0])
        assert "config" in attrs
    # The dashboard's trial table offers each metric as a sortable column.
    columns = {c["key"]: c["sortable"] for c in detail["union_user_attrs"]}
    assert all(columns.get(m) is True for m in HARNESS_METRICS), columns
