"""A password in a storage URL is never stored: read back from the database itself (every row of
every table, and the SQLite file's own bytes), the exports, the report, the journal, and what each
command printed. Real runs of a small real model: through the CLI as a user types it, and through
the Python API, with the password in --storage and in the spec's own `storage:` field.

The PostgreSQL server uses trust authentication, so it accepts the made-up password and ignores
it; each test draws a fresh one, so that nothing else in the database can contain it by chance.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from helpers import dump, make_spec_dict, write_spec

from autotuner.progress import Progress

QUIET = Progress(quiet=True)
AUTOTUNE = str(Path(sys.executable).parent / "autotune")
# One backend that every export format takes, one objective; batch 1 is the spec's baseline, a few
# times slower per item than batch 32, so `verify --baseline` has a clear answer.
SPACE = {"backend": ["onnxruntime-cpu"], "precision": ["fp32"], "batch_size": [1, 32], "threads": [1]}
OBJECTIVES = [{"metric": "throughput_items_s", "direction": "maximize"}]
PICK = {"rounds": 2, "round_time_s": 0.2, "confidence": 0.99}


def _password() -> str:
    return f"pw{uuid.uuid4().hex}"


def _pg_url(password: str) -> str:
    return f"postgresql+psycopg://postgres:{password}@127.0.0.1:5432/test"


def _pg_up() -> bool:
    try:
        with sqlalchemy.create_engine(_pg_url("any")).connect():
            return True
    except Exception:  # noqa: BLE001
        return False


needs_pg = pytest.mark.skipif(not _pg_up(), reason="no PostgreSQL server at 127.0.0.1:5432")


def _spec(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "space": SPACE,
        "objectives": OBJECTIVES,
        "sampler": {"type": "grid"},
        "budget": {"trials": 2},
        "baseline": {"batch_size": 1},
        "pick": PICK,
    }
    return make_spec_dict(**{**base, **overrides})


def files_holding(root: Path, secret: str) -> list[Path]:
    """The files under root whose bytes contain the secret."""
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _study_tables_read(text: str, study: str) -> None:
    """The dump holds the study's stored spec, trials and constraints: the search read above
    covered the attributes where the URL would be."""
    for table in ("study_user_attributes", "trial_user_attributes", "trial_system_attributes"):
        assert f"\n{table} (" in f"\n{text}" and f"{table} (0 rows)" not in text, table
    assert study in text and '"storage": "postgresql+psycopg://postgres:***@127.0.0.1:5432/test"' in text


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AUTOTUNE, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@needs_pg
def test_cli_run_with_a_password_in_storage_stores_none(in_tmp: Path, _cache_dir: Path) -> None:
    password = _password()
    url = _pg_url(password)
    name = f"pw-{uuid.uuid4().hex[:8]}"
    (in_tmp / "spec.yaml").write_text(yaml.safe_dump(_spec(), sort_keys=False))
    # An AUTOTUNE_* variable carrying the URL (the tests' own one does) must not leak either.
    env = {**os.environ, "AUTOTUNE_TEST_POSTGRES": url}
    said: list[str] = []

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        out = cli(*args, cwd=in_tmp, env=env)
        said.append(out.stdout + out.stderr)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    try:
        ok("run", "spec.yaml", "--study", name, "--storage", url)
        ok("export", name, "--storage", url, "-o", "exported.yaml")
        ok("export", name, "--storage", url, "--format", "ort", "-o", "exported.ort.json")
        ok("export", name, "--storage", url, "--format", "triton", "-o", "triton")
        ok("report", name, "--storage", url, "-o", "report.html")
        ok("report", name, "--storage", url, "--format", "json", "-o", "table.json")
        ok("show", name, "--storage", url)
        ok("studies", "--storage", url)
        stored = dump(url)

        # verify takes the storage from the command line: the recorded one hides the password.
        refused = cli("verify", f"reports/{name}.best.yaml", "--baseline", cwd=in_tmp, env=env)
        said.append(refused.stdout + refused.stderr)
        assert refused.returncode == 2 and "has its password hidden" in refused.stderr, refused.stderr
        out = ok("verify", f"reports/{name}.best.yaml", "--baseline", "--storage", url)
        # The baseline (batch 1) is several times slower per item: the candidate passes (exit 0).
        # Better, or no significant difference when another process takes a core mid-round.
        assert "against the spec's baseline" in out.stdout and out.stdout.endswith("(exit 0)\n")
        assert dump(url) == stored  # verify wrote nothing to the study
    finally:
        optuna.delete_study(study_name=name, storage=url)

    _study_tables_read(stored, name)
    assert password not in stored
    for text in said:
        assert password not in text
    assert "postgres:***@" in "".join(said)
    best = yaml.safe_load((in_tmp / "exported.yaml").read_text())
    assert best["provenance"]["storage"] == "postgresql+psycopg://postgres:***@127.0.0.1:5432/test"
    assert {p.name for p in in_tmp.rglob("*")} >= {"report.html", "config.pbtxt", "exported.ort.json"}
    assert files_holding(in_tmp, password) == []
    assert files_holding(_cache_dir, password) == []  # the result journals live in the cache


@needs_pg
def test_api_run_with_a_password_in_the_spec_storage_field_stores_none(in_tmp: Path) -> None:
    from autotuner.api import export, report, run

    password = _password()
    url = _pg_url(password)
    name = f"pw-{uuid.uuid4().hex[:8]}"
    spec = write_spec(in_tmp, **_spec(storage=url, study=name, baseline=None, pick={"rounds": 0}))
    try:
        out = run(spec, progress=QUIET)
        assert out.storage == "postgresql+psycopg://postgres:***@127.0.0.1:5432/test"
        # export and report read the study where it lives: given here, not the stored `***` URL.
        export(name, storage=url, output=in_tmp / "again.yaml", progress=QUIET)
        report([name], storage=url, output=in_tmp / "again.html")
        stored = dump(url)
    finally:
        optuna.delete_study(study_name=name, storage=url)
    _study_tables_read(stored, name)
    assert password not in stored
    assert (in_tmp / "again.yaml").exists() and files_holding(in_tmp / "reports", password) == []
    assert files_holding(in_tmp, password) == [spec]  # the user's own spec file only


def test_api_stages_in_sqlite_with_a_password_in_the_spec_store_none(in_tmp: Path, caps: dict) -> None:
    """The spec names a PostgreSQL URL with a password; the stages put its study in SQLite."""
    from autotuner import api

    password = _password()
    spec = api.spec_from_dict(_spec(storage=_pg_url(password), study="s"))
    db = in_tmp / "s.db"
    url = f"sqlite:///{db}"
    study = api.open_study(spec, storage=url, caps=caps)
    with api.make_executor("local", spec, caps) as ex:
        assert password not in repr(ex.spec_dict)  # what each worker's request file holds
        api.search(spec, study, ex, caps=caps, storage=url)
        pick = api.choose(spec, study, executor=ex)
    assert pick is not None and pick.remeasured
    api.write_best_config(spec, study, pick, in_tmp / "best.yaml", url)
    api.report(["s"], storage=url, output=in_tmp / "s.html")
    text = dump(url)
    assert "study_user_attributes (0 rows)" not in text and "postgres:***@" in text
    assert password not in text
    # The file itself, and its write-ahead log: no page, free or in use, holds the password.
    assert db.exists() and files_holding(in_tmp, password) == []


def test_the_spec_fingerprint_does_not_hash_the_password() -> None:
    """The fingerprint is stored: were the password in its input, a known spec would let anyone
    holding the study test guesses offline."""
    from autotuner.api import spec_from_dict

    a, b = (spec_from_dict(make_spec_dict(storage=_pg_url(_password()))) for _ in range(2))
    other_host = spec_from_dict(make_spec_dict(storage=_pg_url("x").replace("127.0.0.1", "db-host")))
    assert a.fingerprint() == b.fingerprint() != other_host.fingerprint()


def test_a_journal_for_a_password_url_holds_no_password(tmp_path: Path) -> None:
    from autotuner.result import TrialResult
    from autotuner.study.journal import Journal

    password = _password()
    journal = Journal("s", _pg_url(password))
    journal.add(7, 3, TrialResult(ok=True, metrics={"throughput_items_s": 1.0}))
    assert journal.pending() and password not in str(journal.path)
    assert password.encode() not in journal.path.read_bytes()
    journal.done(7)
    journal.compact()


def test_a_study_stored_before_the_fix_reads_back_without_its_password(tmp_path: Path) -> None:
    from autotuner.study import records as rec

    password = _password()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'old.db'}", study_name="old")
    study.set_user_attr(rec.SPEC, {"name": "old", "storage": _pg_url(password)})
    assert rec.stored_spec(study)["storage"] == "postgresql+psycopg://postgres:***@127.0.0.1:5432/test"
