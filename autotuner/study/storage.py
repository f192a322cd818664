"""Where studies live: SQLite by default, any SQLAlchemy URL otherwise. Passwords never shown."""

from __future__ import annotations

import logging
import re
import secrets
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from autotuner._version import __version__
from autotuner.errors import StudyNotFound, UsageError
from autotuner.models.dataset import data_sets
from autotuner.progress import Progress
from autotuner.spec.loading import public_spec_dict
from autotuner.spec.schema import Spec
from autotuner.spec.urls import redact
from autotuner.study import records as rec

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


def default_url(study: str) -> str:
    return f"sqlite:///studies/{study}.db"


def _sqlite_file(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


# A server that accepts the connection but never answers must not hold a run in silence: the
# driver says what it waits for and gives up after this long. `?connect_timeout=N` in the URL
# (libpq's own parameter) sets another bound.
CONNECT_TIMEOUT_S = 10
_TIMEOUT_DIALECTS = ("postgresql", "mysql")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def open_storage(url: str, create: bool, say: Callable[[str], None] = _stderr) -> RDBStorage:
    """An RDBStorage. With create=False a missing SQLite file is an error, not a new database."""
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise UsageError(f"--storage: {redact(url)} is not a database URL (e.g. sqlite:///x.db)") from None
    path = _sqlite_file(url)
    if path is not None:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise StudyNotFound(f"no study database at {path} (give --storage URL if it lives elsewhere)")
    kwargs: dict[str, Any] = {"pool_pre_ping": True} if u.get_backend_name() != "sqlite" else {}
    if u.get_backend_name() in _TIMEOUT_DIALECTS:
        timeout = u.query.get("connect_timeout")
        if timeout is None:
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        shown = timeout if isinstance(timeout, str) else CONNECT_TIMEOUT_S
        say(f"connecting to {redact(url)} (gives up after {shown} s; ?connect_timeout=N in the URL sets it)")
    try:
        storage = RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # noqa: BLE001 - drivers raise many types; one line for all
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = re.sub(r"^\([\w.]+\) ", "", msg)  # SQLAlchemy's "(psycopg.errors.ConnectionTimeout) "
        raise UsageError(f"cannot open storage {redact(url)}: {msg.replace(url, redact(url))}") from None
    if path is not None:
        _write_ahead(storage)
    return storage


def _write_ahead(storage: RDBStorage) -> None:
    """SQLite in write-ahead-log mode: a commit appends to the log (one sync) instead of
    rewriting pages through a rollback journal, and readers (optuna-dashboard, a second driver)
    never block the writer. The mode is stored in the file; a file another driver holds locked
    right now keeps the mode it has."""
    try:
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    except Exception:  # noqa: BLE001 - locked by another driver right now: its mode stands
        pass


def load_study(name: str, url: str, say: Callable[[str], None] = _stderr) -> optuna.Study:
    storage = open_storage(url, create=False, say=say)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        have = f"; it holds: {', '.join(names)}" if names else "; it holds no study"
        raise StudyNotFound(f"no study named {name!r} in {redact(url)}{have}") from None


def _data_sha256(spec: Spec) -> str | None:
    """The content hash of the spec's data (read from the cache the model check filled), or None."""
    if spec.data is None:
        return None

    try:
        return data_sets(spec).sha256
    except Exception:  # noqa: BLE001 - unreadable here: the check before the study says why
        return None


def stored_spec(spec: Spec) -> dict[str, Any]:
    """The spec as a study keeps it: without the digests of this run's model and data (the
    study records them apart, and a later reader finds them anew from the model it has)."""
    data = public_spec_dict(spec)
    data.pop("model_digest", None)
    data.pop("data_digest", None)
    return data


def open_study(spec: Spec, storage_url: str, caps: dict[str, Any], progress: Progress) -> optuna.Study:
    """The spec's study: created with its attributes (spec, machine, sampler seed), or resumed."""
    storage = open_storage(storage_url, create=True, say=progress.say)
    directions = [o.direction for o in spec.objectives]
    name = spec.study_name
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    try:
        if name in existing:
            raise optuna.exceptions.DuplicatedStudyError(name)
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        # Resuming, or another driver created the study a moment ago (drivers sharing a study).
        study = optuna.load_study(study_name=name, storage=storage)
        have = [d.name.lower() for d in study.directions]
        if have != directions:
            raise UsageError(
                f"study {name!r} in {redact(storage_url)} optimizes {have}, the spec asks for "
                f"{directions}; use another --study name"
            ) from None
        if rec.study_attr(study, rec.SPEC_FINGERPRINT) not in (None, spec.fingerprint()):
            progress.say(f"note: the spec changed since study {name!r} was created; resuming anyway")
        was, now = rec.study_attr(study, rec.DATA_SHA256), _data_sha256(spec)
        if was is not None and now is not None and was != now:
            progress.say(
                f"note: the data's content changed since study {name!r} was created (sha256 {was[:12]} "
                f"-> {now[:12]}); resuming anyway: each trial's info names the data it was measured on"
            )
        was, now = rec.study_attr(study, rec.MODEL_SHA256), spec.model_digest
        if was is not None and now is not None and was != now:
            progress.say(
                f"note: the model changed since study {name!r} was created (its weights or graph: sha256 "
                f"{was[:12]} -> {now[:12]}); resuming anyway: each trial's info names the model it measured"
            )
        return study
    # optuna-dashboard and Optuna's plots label the objectives by these names. (Optuna calls the
    # method experimental; it has been stable since 3.2 and the names are only labels.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in spec.objectives])
    rec.init_study(
        study,
        **{
            rec.SAMPLER_SEED: spec.seed if spec.seed is not None else secrets.randbelow(2**31),
            rec.SPEC: stored_spec(spec),
            rec.SPEC_FINGERPRINT: spec.fingerprint(),
            **({rec.DATA_SHA256: sha} if (sha := _data_sha256(spec)) else {}),
            **({rec.MODEL_SHA256: spec.model_digest} if spec.model_digest else {}),
            rec.ENVIRONMENT: caps,
            rec.VERSION: __version__,
        },
    )
    return study
