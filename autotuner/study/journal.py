"""Surviving a database that goes away: retry with backoff, and a local journal of results.

A measurement that finished while the database was unreachable is written to a journal file on
this machine first, so it is never lost: the driver writes it to the study when the database is
back, or, if the driver itself dies first, the next start replays it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from autotuner.errors import AutotuneError
from autotuner.files import cache_dir
from autotuner.result import TrialResult
from autotuner.study.records import running_trial
from autotuner.study.storage import redact

T = TypeVar("T")
DB_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)
MAX_WAIT_S = float(os.environ.get("AUTOTUNE_DB_WAIT_S", "600"))


def retry_db(fn: Callable[[], T], what: str, say: Callable[[str], None], url: str) -> T:
    """Call fn; while the database is unreachable, wait with backoff (1, 2, 4 .. 15 s) and say so."""
    delay, waited = 1.0, 0.0
    while True:
        try:
            return fn()
        except DB_ERRORS as e:
            reason = _reason(e, url)
            if waited >= MAX_WAIT_S:
                raise AutotuneError(
                    f"the database {redact(url)} stayed unreachable for {waited:.0f} s while {what}: {reason}"
                ) from None
            say(f"database {redact(url)} unreachable while {what} ({reason}); retrying in {delay:.0f} s")
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 15.0)


# What a driver error says, in words: Optuna wraps a lost connection in a StorageInternalError
# about "invalid data in the commit, e.g. exceeding max length", which misleads.
_WORDS = (
    ("connection refused", "connection refused: no server is listening"),
    ("timeout expired", "the connection timed out"),
    ("timed out", "the connection timed out"),
    ("server closed the connection", "the server closed the connection"),
    ("terminating connection", "the server ended the connection (it is shutting down or restarting)"),
    ("the database system is shutting down", "the server is shutting down"),
    ("the database system is starting up", "the server is starting up"),
    ("database is locked", "the database file is locked by another process"),
    ("could not translate host name", "the host name does not resolve"),
    ("no route to host", "no route to the host"),
    ("network is unreachable", "the network is unreachable"),
    ("connection reset", "the connection was reset"),
    ("consuming input failed", "the server closed the connection"),
)


def _reason(e: BaseException, url: str) -> str:
    """Why the database is unreachable, in words, from the driver's own error below Optuna's."""
    root: BaseException = e
    seen: list[BaseException] = []
    while root is not None and root not in seen:
        seen.append(root)
        if getattr(root, "orig", None) is not None:
            root = root.orig  # type: ignore[attr-defined]
            break
        nxt = root.__cause__ or root.__context__
        if nxt is None:
            break
        root = nxt
    text = (str(root).strip().splitlines() or [type(root).__name__])[0]
    low = text.lower()
    words = next((w for marker, w in _WORDS if marker in low), None)
    if words is None and isinstance(root, optuna.exceptions.StorageInternalError):
        words = "the database did not take the write"

    password = make_url(url).password
    text = text.replace(str(password), "***") if password else text
    return (f"{words} ({text[:160]})" if words and words not in low else words or text)[:240]


def database_identity(url: str) -> str:
    """The database a URL names: an absolute file for SQLite (a relative path means another
    database in another folder), else the URL without its password."""

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return f"sqlite:{Path(u.database).resolve()}"
    return redact(url)


class Journal:
    """Append-only JSON lines: {"trial_id", "number", "result"} then {"done": trial_id}."""

    def __init__(self, study: str, url: str) -> None:
        key = hashlib.sha256(f"{database_identity(url)}|{study}".encode()).hexdigest()[:12]
        self.path = cache_dir() / "journal" / f"{study}-{key}.jsonl"

    def add(self, trial_id: int, number: int, result: TrialResult) -> None:
        self._append({"trial_id": trial_id, "number": number, "result": result.to_dict()})

    def done(self, trial_id: int) -> None:
        self._append({"done": trial_id})

    def pending(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []  # never written, or compacted by another driver sharing the study
        entries: dict[int, dict[str, Any]] = {}
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if "done" in rec:
                entries.pop(int(rec["done"]), None)
            else:
                entries[int(rec["trial_id"])] = rec
        return list(entries.values())

    def compact(self) -> None:
        """Remove the file once nothing in it is pending. Drivers sharing a study share the
        journal: the check and the removal happen under the same lock as every append, so an
        entry another driver writes meanwhile is never removed with the file."""
        with self._locked():
            if not self.pending():
                self.path.unlink(missing_ok=True)

    def _append(self, rec: dict[str, Any]) -> None:
        with self._locked(), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def replay(
    journal: Journal,
    study: optuna.Study,
    tell: Callable[[optuna.trial.Trial, TrialResult], None],
    say: Callable[[str], None],
) -> int:
    """Write results a previous driver kept in its journal but never stored."""

    n = 0
    for entry in journal.pending():
        trial = running_trial(study, int(entry["trial_id"]), int(entry["number"]))
        if trial is not None:
            tell(trial, TrialResult.from_dict(entry["result"]))
            n += 1
        journal.done(entry["trial_id"])
    if n:
        say(f"stored {n} measured result(s) kept in {journal.path} by a driver that stopped")
    journal.compact()
    return n
