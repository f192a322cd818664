"""Where studies live: SQLite by default, any SQLAlchemy URL otherwise. Passwords never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from autotuner.errors import StudyNotFound, UsageError

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


def default_url(study: str) -> str:
    return f"sqlite:///studies/{study}.db"


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable storage URL>"


def _sqlite_file(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def open_storage(url: str, create: bool) -> RDBStorage:
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
    kwargs = {"pool_pre_ping": True} if u.get_backend_name() != "sqlite" else {}
    try:
        return RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # noqa: BLE001 - drivers raise many types; one line for all
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"cannot open storage {redact(url)}: {msg.replace(url, redact(url))}") from None


def load_study(name: str, url: str) -> optuna.Study:
    storage = open_storage(url, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        have = f"; it holds: {', '.join(names)}" if names else "; it holds no study"
        raise StudyNotFound(f"no study named {name!r} in {redact(url)}{have}") from None
