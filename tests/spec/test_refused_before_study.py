"""Bad input that only shows outside the spec file: a model source that is not there, an output
folder that cannot be written, a database that never answers. Each is refused with one line
and exit 2 before a study exists, through the real command line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from test_spec_errors import CASES

ROOT = Path(__file__).resolve().parents[2]

SPEC = {
    "name": "q",
    "model": {"factory": "mymod:build"},
    "inputs": [{"name": "x", "shape": ["batch", 16]}],
    "space": {"backend": ["torch-eager"], "batch_size": [1]},
    "objectives": [{"metric": "latency_p50_ms", "direction": "minimize"}],
}


def _onnx_identity(path: Path) -> None:
    """A real ONNX model with one input, x."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))


def _model(model: dict, setup: Callable[[Path], object] = lambda d: None, **extra: object) -> tuple:
    return ({**SPEC, "model": model, **extra}, setup)


MODEL_CASES = [
    pytest.param(
        *_model({"factory": "nonexistent.mod:fn"}),
        "model.factory: cannot import 'nonexistent.mod': No module named 'nonexistent'",
        id="factory-package-missing",
    ),
    pytest.param(
        *_model({"factory": "nomod:build"}),
        "model.factory: no module 'nomod' (looked in the spec's folder {d}, the current folder and sys.path)",
        id="factory-module-missing",
    ),
    pytest.param(
        *_model(
            {"factory": "mymod:build"}, lambda d: (d / "mymod.py").write_text("def other():\n    pass\n")
        ),
        "model.factory: {d}/mymod.py defines no 'build'",
        id="factory-function-missing",
    ),
    pytest.param(
        *_model({"factory": "mymod:build"}, lambda d: (d / "mymod.py").write_text("def build(:\n")),
        "model.factory: {d}/mymod.py line 1: invalid syntax",
        id="factory-syntax-error",
    ),
    pytest.param(
        *_model({"onnx": "m.onnx"}),
        "model.onnx: no such file: {d}/m.onnx",
        id="onnx-missing",
    ),
    pytest.param(
        *_model({"onnx": "m.onnx"}, lambda d: (d / "m.onnx").mkdir()),
        "model.onnx: {d}/m.onnx is not a file",
        id="onnx-a-directory",
    ),
    pytest.param(
        *_model({"onnx": "m.onnx"}, lambda d: (d / "m.onnx").write_bytes(b"")),
        "model.onnx: {d}/m.onnx is not an ONNX model (its graph has no nodes)",
        id="onnx-empty-file",
    ),
    pytest.param(
        *_model({"onnx": "m.onnx"}, lambda d: (d / "m.onnx").write_text("hello, I am text\n")),
        "model.onnx: {d}/m.onnx is not an ONNX model (",
        id="onnx-not-onnx",
    ),
    pytest.param(
        *_model(
            {"onnx": "m.onnx"},
            lambda d: _onnx_identity(d / "m.onnx"),
            inputs=[{"name": "input_ids", "shape": ["batch", 16]}],
        ),
        "inputs[0].name: 'input_ids' is not an input of m.onnx; its inputs: x",
        id="onnx-input-name-not-in-graph",
    ),
    pytest.param(
        *_model({"hf": "llm"}, space={"backend": ["llm"]}),
        "model.hf: {d}/llm is not a folder; give a local Hugging Face model folder",
        id="hf-folder-missing",
    ),
    pytest.param(
        *_model({"hf": "llm"}, lambda d: (d / "llm").mkdir(), space={"backend": ["llm"]}),
        "model.hf: {d}/llm has no config.json; give a local Hugging Face model folder",
        id="hf-folder-without-config",
    ),
]


def _cli(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "autotuner.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _refused(proc: subprocess.CompletedProcess[str], cwd: Path, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"autotune: error: {expected}"), lines[0]
    assert not (cwd / "studies").exists()
    assert not (cwd / "reports").exists()


@pytest.mark.parametrize(("spec", "setup", "expected"), MODEL_CASES)
def test_a_model_source_that_is_not_there_is_refused_before_a_study(
    tmp_path: Path, spec: dict, setup: Callable[[Path], object], expected: str
) -> None:
    setup(tmp_path)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    _refused(_cli(tmp_path, "run", "spec.yaml"), tmp_path, "spec.yaml: " + expected.format(d=tmp_path))


def test_a_good_onnx_file_passes_the_check(tmp_path: Path) -> None:
    from autotuner.api import check_model, load_spec

    _onnx_identity(tmp_path / "m.onnx")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**SPEC, "model": {"onnx": "m.onnx"}}))
    check_model(load_spec(tmp_path / "spec.yaml"))  # no error


def test_a_factory_bound_in_a_branch_or_by_import_passes_the_check(tmp_path: Path) -> None:
    from autotuner.api import check_model, load_spec

    (tmp_path / "mymod.py").write_text(
        "try:\n    from torch.nn import Linear as build\nexcept ImportError:\n    build = None\n"
    )
    # The model is built once to hash its weights: options that fit it are given.
    model = {**SPEC["model"], "options": {"in_features": 16, "out_features": 4}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**SPEC, "model": model}))
    assert check_model(load_spec(tmp_path / "spec.yaml")).model_digest


def test_a_factory_that_cannot_build_its_model_is_refused_before_a_study(tmp_path: Path) -> None:
    (tmp_path / "mymod.py").write_text("def build():\n    raise RuntimeError('no weights.pt here')\n")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    _refused(
        _cli(tmp_path, "run", "spec.yaml"),
        tmp_path,
        "spec.yaml: model.factory: building the model to hash its weights failed: "
        "RuntimeError: no weights.pt here",
    )


TINY = {"builtin": "tiny-transformer", "options": {"layers": 1, "hidden": 32, "heads": 2, "seq_len": 8}}


def _tiny(space: dict, **extra: object) -> dict:
    return {**SPEC, "model": TINY, "inputs": None, "space": space, **extra}


# Issue 24: input that used to start a study (a crash after it, every trial refused, or a section
# ignored in silence), each now one line before a study exists.
STARTED_A_STUDY = [
    pytest.param(
        _tiny({"backend": ["torch-eager"], "batch_size": {"low": 1, "high": 10**12}}),
        "space.batch_size.high: the range 1 to 1,000,000,000,000 holds 1,000,000,000,000 values; an int "
        "range holds at most 1,000,000 (give log: true, a larger step, or a lower high)",
        id="huge-int-range",
    ),
    pytest.param(
        _tiny({"backend": ["torch-eager"], "batch_size": {"low": 1, "high": 10**12, "log": True}}),
        "space.batch_size.high: 1,000,000,000,000 is above 16,777,216, the most batch_size may be",
        id="huge-log-batch-range",
    ),
    pytest.param(
        _tiny({"backend": ["torch-eager"], "threads": [1, 100000]}),
        "space.threads: 100000 is above 4,096, the most threads may be",
        id="threads-beyond-any-machine",
    ),
    pytest.param(
        _tiny(
            {
                "backend": ["onnxruntime-cpu"],
                "precision": ["fp32"],
                "calibration": ["entropy"],
                "batch_size": [1, 2],
            }
        ),
        "space: no config of the space can run here: all 2 configs are refused before launch (e.g. "
        "backend=onnxruntime-cpu precision=fp32 calibration=entropy batch_size=1: calibration applies to "
        "precision int8 (static, calibrated)); it would run with calibration left out of the space (or "
        "given a `when` condition)",
        id="condition-never-met",
    ),
    pytest.param(
        _tiny({"backend": ["torch-eager"], "threads": [64]}),
        "space: no config of the space can run here: all 1 configs are refused before launch (e.g. "
        "backend=torch-eager threads=64: threads=64 exceeds the",
        id="threads-beyond-this-machine",
    ),
    pytest.param(
        _tiny({"backend": ["torch-eager"], "batch_size": [1]}, workload={"requests": 8}),
        "workload: is read by the llm or vllm backend only; this spec searches torch-eager (remove the "
        "section or add a backend that reads it)",
        id="section-no-backend-reads",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), STARTED_A_STUDY)
def test_input_that_used_to_start_a_study_is_refused_before_one(
    tmp_path: Path, spec: dict, expected: str
) -> None:
    spec = {k: v for k, v in spec.items() if v is not None}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    _refused(_cli(tmp_path, "run", "spec.yaml"), tmp_path, "spec.yaml: " + expected)


def test_a_grid_over_a_wide_range_is_sized_without_listing_it() -> None:
    from autotuner.search.space import grid_size, random_config
    from autotuner.spec.loading import parse_spec

    space = {"backend": ["torch-eager"], "batch_size": {"low": 1, "high": 10**6}, "threads": [1, 2]}
    spec = parse_spec({k: v for k, v in _tiny(space).items() if v is not None})
    assert grid_size(spec) == 2 * 10**6
    import random

    draws = {random_config(spec, random.Random(i))["batch_size"] for i in range(50)}
    assert len(draws) > 40 and all(1 <= b <= 10**6 for b in draws)


UNWRITABLE = "/proc/autotune-no-such/out"  # /proc refuses new folders, root or not


CLI_CASES = [
    pytest.param(
        ("report", "t", "-o", f"{UNWRITABLE}/t.html"),
        f"-o: cannot write into {UNWRITABLE}: No such file or directory",
        id="report-o-unwritable",
    ),
    pytest.param(
        ("export", "t", "-o", f"{UNWRITABLE}/t.yaml"),
        f"-o: cannot write into {UNWRITABLE}: No such file or directory",
        id="export-o-unwritable",
    ),
    pytest.param(
        ("run", "spec.yaml", "--trials", "abc"),
        "run: argument --trials: invalid int value: 'abc'",
        id="trials-abc",
    ),
    pytest.param(("run", "spec.yaml", "--trials", "0"), "--trials must be at least 1", id="trials-zero"),
    pytest.param(
        ("run", "spec.yaml", "--executor", "k8s"), "--executor 'k8s' is not available", id="executor-unknown"
    ),
    pytest.param(
        ("run", "spec.yaml", "--storage", "notaurl"),
        "--storage: <unparseable storage URL> is not a database URL",
        id="storage-not-a-url",
    ),
]


@pytest.mark.parametrize(("args", "expected"), CLI_CASES)
def test_command_line_mistakes_are_one_line_and_write_nothing(
    tmp_path: Path, args: tuple, expected: str
) -> None:
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({**SPEC, "model": {"builtin": "tiny-transformer"}, "inputs": None})
    )
    _refused(_cli(tmp_path, *args), tmp_path, expected)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A real socket that accepts connections (the kernel completes the handshake) and never
    says a word: what a hung database host or a firewall's black hole looks like."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_a_database_that_never_answers_is_named_at_once_and_given_up_on(
    tmp_path: Path, silent_server: int
) -> None:
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({**SPEC, "model": {"builtin": "tiny-transformer"}, "inputs": None})
    )
    url = f"postgresql+psycopg://bob:s3cret-pw@127.0.0.1:{silent_server}/db?connect_timeout=2"
    started = time.monotonic()
    proc = _cli(tmp_path, "run", "spec.yaml", "--storage", url, "--trials", "1", timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    # Said before the wait, on stdout with the run's progress; the password never.
    assert f"connecting to postgresql+psycopg://bob:***@127.0.0.1:{silent_server}/db" in proc.stdout
    assert "gives up after 2 s" in proc.stdout
    assert "s3cret-pw" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection timeout expired" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 30, f"gave up after {took:.0f} s, the bound was 2 s (plus start-up)"
    assert not (tmp_path / "studies").exists()


def test_the_default_connect_timeout_applies_without_one_in_the_url(
    tmp_path: Path, silent_server: int
) -> None:
    from autotuner.study.storage import CONNECT_TIMEOUT_S

    said: list[str] = []
    from autotuner.errors import UsageError
    from autotuner.study.storage import open_storage

    started = time.monotonic()
    with pytest.raises(UsageError, match="connection timeout expired"):
        open_storage(f"postgresql+psycopg://bob@127.0.0.1:{silent_server}/db", create=True, say=said.append)
    assert CONNECT_TIMEOUT_S - 1 <= time.monotonic() - started < CONNECT_TIMEOUT_S + 15
    assert said == [
        f"connecting to postgresql+psycopg://bob@127.0.0.1:{silent_server}/db "
        f"(gives up after {CONNECT_TIMEOUT_S} s; ?connect_timeout=N in the URL sets it)"
    ]


def test_the_corpus_of_malformed_input_holds_150_cases() -> None:
    # The spec files (tests/spec/test_spec_errors.py), the model sources and the command lines here.
    assert len(CASES) + len(MODEL_CASES) + len(CLI_CASES) + len(STARTED_A_STUDY) >= 150
