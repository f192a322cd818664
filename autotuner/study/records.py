"""How autotune's data sits in an Optuna study: every stored key, read and written here only.

A trial's user attributes hold its config (`config`), each metric under its own name (so that
optuna-dashboard shows them), `latency_samples_ms`, `info`, and how it ended (`failure_class`,
`failure_message`, `under_load`), plus the markers of free trials (`pooled_from`,
`failed_before`) and of why it was run (`repeat_of`, `load_retry`, `retry_of`, `drawn`).
Constraints are Optuna's own (system attributes `constraints:NAME`), so samplers read them.
The study's user attributes hold the spec, the machine, the race and the pick.

A finished trial is written in one transaction: its attributes, constraints, values and state
(Optuna's public API would take one transaction for each attribute).
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from autotuner.metrics import is_number
from autotuner.result import TrialResult
from autotuner.spec.urls import redact

# Trial user attributes.
CONFIG = "config"
FAILURE_CLASS = "failure_class"
FAILURE_MESSAGE = "failure_message"
UNDER_LOAD = "under_load"
SAMPLES = "latency_samples_ms"
INFO = "info"
POOLED_FROM = "pooled_from"
FAILED_BEFORE = "failed_before"
REPEAT_OF = "repeat_of"
LOAD_RETRY = "load_retry"
RETRY_OF = "retry_of"
DRAWN = "drawn"
PROMOTION = "promotion"  # the DRAWN marker of a trial-length block after a first look
LADDER_OF = "ladder_of"  # a load level measured on the server of that trial (search.ladder)
# Trial system attributes.
OWNER = "autotune:driver"
BEAT = "autotune:heartbeat"
CONSTRAINTS = "constraints"  # Optuna's key prefix: constraints:NAME
RUNNABLE = "runnable"  # the constraint that makes a refused config infeasible for samplers
# Study user attributes.
SPEC = "spec"
SPEC_PATH = "spec_path"
SPEC_FINGERPRINT = "spec_fingerprint"
DATA_SHA256 = "data_sha256"  # of the spec's data, where it has one (its content is not in the spec)
MODEL_SHA256 = "model_sha256"  # what the model computes (models.identity): its weights, not its name
SAMPLER_SEED = "sampler_seed"
ENVIRONMENT = "environment"
VERSION = "autotune_version"
CREATED = "created"
PICK = "pick"
RACE = "race"

# Not metrics, though some are numbers.
_NOT_METRICS = frozenset(
    {CONFIG, FAILURE_CLASS, FAILURE_MESSAGE, UNDER_LOAD, SAMPLES, INFO, POOLED_FROM, FAILED_BEFORE}
    | {REPEAT_OF, LOAD_RETRY, RETRY_OF, DRAWN}
)


# ---- reading a trial ----------------------------------------------------------------------------


def trial_config(t: FrozenTrial) -> dict[str, Any]:
    """The config a trial ran (its parameters, with fixed ones included)."""
    return dict(t.user_attrs.get(CONFIG, t.params))


def failure_class(t: FrozenTrial) -> str | None:
    return t.user_attrs.get(FAILURE_CLASS)


def failure_message(t: FrozenTrial) -> str:
    return str(t.user_attrs.get(FAILURE_MESSAGE) or "")


def refused_values(t: FrozenTrial) -> dict[str, Any]:
    """Knob values the engine refused in this trial whatever the other knobs were (see
    errors.UnsupportedConfig.refused); empty for any other failure."""
    info = t.user_attrs.get(INFO)
    refused = info.get("refused") if isinstance(info, dict) else None
    return dict(refused) if isinstance(refused, dict) else {}


def metric(t: FrozenTrial, name: str) -> float | None:
    v = t.user_attrs.get(name)
    return float(v) if is_number(v) else None


def metrics(t: FrozenTrial) -> dict[str, float]:
    """Every numeric metric a trial stored."""
    return {k: float(v) for k, v in t.user_attrs.items() if k not in _NOT_METRICS and is_number(v)}


def samples(t: FrozenTrial) -> list[float]:
    return list(t.user_attrs.get(SAMPLES) or [])


def under_load(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get(UNDER_LOAD)) or failure_class(t) == "under-load"


def pooled_from(t: FrozenTrial) -> list[int] | None:
    return t.user_attrs.get(POOLED_FROM)


def info(t: FrozenTrial) -> dict[str, Any]:
    """What the trial's runner said of how it ran (the model and data it measured, ...)."""
    return dict(t.user_attrs.get(INFO) or {})


def is_promotion(t: FrozenTrial | Trial) -> bool:
    """A trial-length block of a config whose first look said it may still win."""
    return t.user_attrs.get(DRAWN) == PROMOTION


def is_first_look(t: FrozenTrial) -> bool:
    """A short first look at a config (measurement.first_look_s): its runner said so in `info`."""
    return info(t).get("fidelity") == "short"


def failed_before(t: FrozenTrial) -> int | None:
    return t.user_attrs.get(FAILED_BEFORE)


def marker(t: FrozenTrial, key: str, default: Any = None) -> Any:
    """One of the why-it-ran markers (REPEAT_OF, LOAD_RETRY, RETRY_OF, DRAWN)."""
    return t.user_attrs.get(key, default)


def owner(t: FrozenTrial) -> dict[str, Any]:
    return dict(t.system_attrs.get(OWNER) or {})


def last_beat(t: FrozenTrial) -> float:
    start = t.datetime_start.timestamp() if t.datetime_start else 0.0
    return float(t.system_attrs.get(BEAT, start))


# ---- reading the study ---------------------------------------------------------------------------


def stored_spec(study: optuna.Study) -> dict[str, Any]:
    """The spec the study was created with, in today's terms (see `legacy_int8`). Its storage URL
    shows no password, also in a study stored before autotune hid it there."""
    spec = dict(study.user_attrs.get(SPEC) or {})
    if spec.get("storage"):
        spec["storage"] = redact(str(spec["storage"]))
    if not legacy_int8(spec):
        return spec
    space = {}
    for name, param in spec["space"].items():
        if name == "precision":
            param = _renamed(param)
        elif isinstance(param, dict) and isinstance(param.get("when"), dict) and "precision" in param["when"]:
            param = {**param, "when": {**param["when"], "precision": _renamed(param["when"]["precision"])}}
        space[name] = param
    spec["space"] = space
    if isinstance(spec.get("baseline"), dict):
        spec["baseline"] = _renamed(spec["baseline"])
    return spec


def legacy_int8(spec: Mapping[str, Any]) -> bool:
    """A spec stored before static INT8 existed: its `int8` was dynamic quantization (now
    `int8-dynamic`). Unambiguous: a spec that searches int8 today must have a data section."""
    space = spec.get("space") or {}
    precision = space.get("precision")
    if spec.get("data") or precision is None or "int8" not in _values(precision):
        return False
    # Only the torch and onnxruntime runners changed; a program's own int8 (trtexec) did not.
    backends = _values(space["backend"]) if "backend" in space else ["torch-eager"]
    return all(str(b).startswith(("torch-", "onnxruntime-")) for b in backends if b is not None)


def current_config(spec: Mapping[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A stored config in today's terms: `int8` of a study from before static INT8 is int8-dynamic."""
    if config.get("precision") == "int8" and legacy_int8(spec):
        return {**config, "precision": LEGACY_INT8}
    return config


LEGACY_INT8 = "int8-dynamic"


def config_now(study: optuna.Study, config: dict[str, Any]) -> dict[str, Any]:
    """`current_config` against the spec as the study stored it."""
    return current_config(study.user_attrs.get(SPEC) or {}, config)


def _values(param: Any) -> list[Any]:
    """The values a stored parameter takes (its choices, or its fixed value)."""
    if isinstance(param, dict):
        return list(param.get("choices") or []) + ([param["value"]] if param.get("value") is not None else [])
    return list(param) if isinstance(param, list) else [param]


def _renamed(v: Any) -> Any:
    """int8 -> int8-dynamic in a stored parameter, a baseline or a condition's value list."""
    if isinstance(v, dict):
        return {k: (_renamed(x) if k in ("choices", "value", "precision") else x) for k, x in v.items()}
    if isinstance(v, list):
        return [_renamed(x) for x in v]
    return LEGACY_INT8 if v == "int8" else v


def environment(study: optuna.Study) -> dict[str, Any]:
    return dict(study.user_attrs.get(ENVIRONMENT) or {})


def race_blocks(attrs: Mapping[str, Any] | optuna.Study) -> list[dict[str, Any]]:
    """Every stored race block (study attribute `race`), in the order they were measured."""
    if isinstance(attrs, optuna.Study):
        attrs = attrs.user_attrs
    return list((attrs.get(RACE) or {}).get("blocks") or [])


def stored_pick(study: optuna.Study) -> dict[str, Any] | None:
    return study.user_attrs.get(PICK)


# ---- writing -------------------------------------------------------------------------------------


def init_study(study: optuna.Study, **attrs: Any) -> None:
    """The attributes of a new study (spec, spec_fingerprint, sampler_seed, environment, ...)."""
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for k, v in {**attrs, CREATED: created}.items():
        study.set_user_attr(k, v)


def save_race(study: optuna.Study, blocks: list[dict[str, Any]]) -> None:
    study.set_user_attr(RACE, {"blocks": blocks})


def save_pick(study: optuna.Study, pick: dict[str, Any]) -> None:
    study.set_user_attr(PICK, pick)


def set_spec_path(study: optuna.Study, path: str) -> None:
    study.set_user_attr(SPEC_PATH, path)


def set_marker(trial: Trial, key: str, value: Any) -> None:
    trial.set_user_attr(key, value)


def queue(study: optuna.Study, params: dict[str, Any], **markers: Any) -> None:
    """Have the next ask return these parameters, with markers saying why."""
    study.enqueue_trial(params, user_attrs=markers)


def claim(study: optuna.Study, trial: Trial, who: dict[str, Any]) -> None:
    """Mark a just-asked trial as this driver's (for recovery after the driver dies)."""
    study._storage.set_trial_system_attr(trial._trial_id, OWNER, who)


def start(study: optuna.Study, trial: Trial, config: dict[str, Any], **markers: Any) -> None:
    """Store the config a trial will run (and why it runs), in one transaction."""
    attrs = {CONFIG: config, **markers}
    rdb = _rdb(study)
    if rdb is None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return

    tid = trial._trial_id
    with _create_scoped_session(rdb.scoped_session) as session:
        _upsert(rdb, session, models.TrialUserAttributeModel, tid, attrs)
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        cached.user_attrs.update(attrs)


def heartbeat(study: optuna.Study, trials: Iterable[Trial], now: float) -> None:
    for t in trials:
        study._storage.set_trial_system_attr(t._trial_id, BEAT, now)


def trial_id(trial: Trial | FrozenTrial) -> int:
    return trial._trial_id


def running_trial(study: optuna.Study, tid: int, number: int) -> Trial | None:
    """The trial with this database id and number, if it is still RUNNING (a journal entry's)."""
    storage = study._storage
    try:
        # Trial ids are unique per database, numbers per study: both must match.
        same = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    except KeyError:
        return None
    if same != tid or storage.get_trial(tid).state != TrialState.RUNNING:
        return None
    return Trial(study, tid)


def result_attrs(result: TrialResult) -> dict[str, Any]:
    """A measured result as trial attributes: each metric on its own (NaN and inf as null)."""
    attrs: dict[str, Any] = {k: (v if math.isfinite(v) else None) for k, v in result.metrics.items()}
    if result.latency_samples_ms:
        attrs[SAMPLES] = result.latency_samples_ms
    if result.info:
        attrs[INFO] = result.info
    if result.info.get("under_load"):
        attrs[UNDER_LOAD] = 1
    return attrs


def finish(
    study: optuna.Study,
    trial: Trial,
    state: TrialState,
    *,
    attrs: Mapping[str, Any] | None = None,
    constraints: Mapping[str, float] | None = None,
    values: list[float] | None = None,
) -> None:
    """Store a trial's attributes and constraints and end it (COMPLETE with values, FAIL or
    PRUNED), all in one transaction where the storage is a database."""
    attrs = dict(attrs or {})
    cons = {f"{CONSTRAINTS}:{k}": float(v) for k, v in (constraints or {}).items()}
    rdb = _rdb(study)
    if rdb is None:  # an in-memory or journal storage: Optuna's public calls
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        for k, v in (constraints or {}).items():
            trial.set_constraint(k, v)
        study.tell(trial, values, state=state if state != TrialState.COMPLETE else None)
        return

    if state == TrialState.COMPLETE and (values is None or len(values) != len(study.directions)):
        raise ValueError(f"a COMPLETE trial needs {len(study.directions)} value(s), got {values}")
    tid = trial._trial_id
    # The trial as its Trial object holds it (no read); the transaction below checks the state.
    # (It is this trial's own copy, and the trial ends here, so it is updated in place.)
    frozen = getattr(trial, "_cached_frozen_trial", None) or study._storage.get_trial(tid)
    frozen.user_attrs.update(attrs)
    frozen.system_attrs.update(cons)
    # What study.tell does around the write: the sampler's hook first, then the stored state.
    study._thread_local.cached_all_trials = None
    study.sampler.after_trial(study, frozen, state, values)
    with _create_scoped_session(rdb.scoped_session) as session:
        row = models.TrialModel.find_or_raise_by_id(tid, session, for_update=True)
        rdb.check_trial_is_updatable(tid, row.state)
        _upsert(rdb, session, models.TrialUserAttributeModel, tid, attrs)
        _upsert(rdb, session, models.TrialSystemAttributeModel, tid, cons)
        for i, v in enumerate(values or []):
            rdb._set_trial_value_without_commit(session, row, i, float(v))
        row.state = state
        row.datetime_complete = datetime.datetime.now()


def fail(study: optuna.Study, trial: Trial, cls: str, message: str, **more: Any) -> None:
    """End a trial as FAIL with a failure class and message."""
    finish(study, trial, TrialState.FAIL, attrs={FAILURE_CLASS: cls, FAILURE_MESSAGE: message, **more})


def interrupt(study: optuna.Study, t: Trial | FrozenTrial, message: str, retry: bool = True) -> None:
    """A trial its driver stopped (Ctrl-C, a dead driver): FAIL interrupted, and its config queued
    again when it had one, so that the next run measures it."""
    live = t if isinstance(t, Trial) else Trial(study, t._trial_id)
    fail(study, live, "interrupted", message)
    frozen = t if isinstance(t, FrozenTrial) else study._storage.get_trial(t._trial_id)
    # A queued config popped by an ask but not yet sampled holds its values as fixed params.
    params = frozen.params or dict(frozen.system_attrs.get("fixed_params") or {})
    if retry and params:  # a fresh trial of a driver killed between ask and sample has none
        # A promotion stays one when retried: it is still not a trial of the budget.
        kept = {DRAWN: PROMOTION} if is_promotion(frozen) else {}
        queue(study, params, **{RETRY_OF: t.number, **kept})


def _upsert(rdb: Any, session: Any, model: Any, tid: int, attrs: Mapping[str, Any]) -> None:
    """Every attribute of one trial in one statement (SQLite, PostgreSQL: an upsert on the
    (trial_id, key) unique constraint); other databases through Optuna's own per-key path."""
    if not attrs:
        return
    dialect = rdb.engine.name
    rows = [{"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
        stmt = insert(model).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[model.trial_id, model.key], set_={"value_json": stmt.excluded.value_json}
        )
        session.execute(stmt)
        return
    for k, v in attrs.items():
        rdb._set_trial_attr_without_commit(session, model, tid, k, v)


def _rdb(study: optuna.Study) -> Any:
    """The RDBStorage under Optuna's cache, or None for other storages."""

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    needed = ("scoped_session", "engine", "_set_trial_attr_without_commit", "_set_trial_value_without_commit")
    if isinstance(backend, RDBStorage) and all(hasattr(backend, n) for n in needed):
        return backend
    return None


def study_attr(study: optuna.Study, key: str, default: Any = None) -> Any:
    """One study attribute by its key (SPEC_PATH, VERSION, CREATED, SPEC_FINGERPRINT, ...)."""
    return study.user_attrs.get(key, default)
