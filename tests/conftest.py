"""Shared fixtures: a session-wide artifact cache, the probed capabilities, small real specs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("autotune-cache")
    os.environ["AUTOTUNE_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(autouse=True)
def _affinity_restored() -> Any:
    """A test that runs a trial in this process pins it to the trial's cores (worker.pin); the
    next test, and a Ray cluster it starts, must not inherit that."""
    cores = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, cores)


@pytest.fixture(scope="session")
def caps() -> dict[str, Any]:
    from autotuner.execution.capabilities import probe

    return probe()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder (studies/ and reports/ land there), with the test models beside."""
    shutil.copy(HERE / "models_for_tests.py", tmp_path / "models_for_tests.py")
    monkeypatch.chdir(tmp_path)
    return tmp_path
