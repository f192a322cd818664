"""Static INT8 on real data: the calibration set is what the scales come from, the evaluation set is
held apart, the task metric's failures are classified, and bad data is refused before a study.

Real models throughout: a small seeded transformer exported to ONNX and quantized by ONNX Runtime,
and the same model quantized by torch; trials run in real worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper
from test_refused_before_study import _cli

ROOT = Path(__file__).resolve().parents[2]
TINY = {"builtin": "tiny-transformer", "options": {"seq_len": 16, "hidden": 64, "layers": 2, "heads": 2}}


def token_ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=(n, 16), dtype=np.int64)


def spec_dict(directory: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "q8",
        "model": TINY,
        "data": {"file": "data.npz", "calibration": 32, "evaluation": 32},
        "space": {"backend": ["onnxruntime-cpu"], "precision": ["int8"], "batch_size": [4], "threads": [1]},
        "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
        "measurement": {"warmup_iters": 1, "min_iters": 3, "min_time_s": 0.05, "max_time_s": 0.2},
        "budget": {"trials": 2},
        "pick": {"rounds": 0},
        **extra,
    }


def write(directory: Path, spec: dict[str, Any], ids: np.ndarray | None = None, **arrays: np.ndarray) -> Path:
    if ids is not None or arrays:
        np.savez(directory / "data.npz", **({"input_ids": ids} if ids is not None else {}), **arrays)
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of its own: every model here is quantized afresh, not read from an earlier test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(folder))
    return folder


def scales(path: Path) -> dict[str, np.ndarray]:
    """The activation scales of a QDQ model (the initializers its QuantizeLinear nodes read)."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[1]: inits[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_calibration_reads_the_data_and_the_same_data_gives_the_same_model(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autotuner.api import load_spec, quantize

    real, constant = tmp_path / "real", tmp_path / "constant"
    real.mkdir()
    constant.mkdir()
    config = {"backend": "onnxruntime-cpu", "precision": "int8"}  # calibration: minmax, the default
    write(real, spec_dict(real), token_ids(80))
    # 80 samples of which only 64 are needed: constant ids except one token that makes each distinct
    same = np.full((80, 16), 7, dtype=np.int64)
    same[:, 0] = np.arange(80)
    write(constant, spec_dict(constant), same)
    a, rec_a = quantize(load_spec(real / "spec.yaml"), config, tmp_path / "a.onnx")
    b, rec_b = quantize(load_spec(constant / "spec.yaml"), config, tmp_path / "b.onnx")
    assert rec_a["data"]["sha256"] != rec_b["data"]["sha256"]
    sa, sb = scales(a), scales(b)
    assert sa.keys() == sb.keys() and len(sa) > 4
    differ = [k for k in sa if not np.allclose(sa[k], sb[k])]
    assert len(differ) > len(sa) // 2, "the scales come from the calibration inputs"
    # The recreate command's promise: the same spec and data, quantized again from nothing.
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    again, rec_again = quantize(load_spec(real / "spec.yaml"), config, tmp_path / "again.onnx")
    assert rec_again["sha256"] == rec_a["sha256"]


def test_torch_static_int8_calibrates_on_the_data() -> None:
    import torch

    from autotuner.models.builtins import build_torch_model
    from autotuner.models.quantization import quantize_torch
    from autotuner.spec.loading import parse_spec

    spec = parse_spec({**spec_dict(Path(".")), "space": {"backend": "torch-eager"}})
    settings = {"calibration": "minmax", "per_channel": True, "exclude": "first-last"}

    def input_scales(ids: np.ndarray) -> list[float]:
        model = build_torch_model(spec)
        record = quantize_torch(
            model, iter([(torch.from_numpy(ids[i : i + 8]),) for i in range(0, 32, 8)]), settings
        )
        assert record["excluded_layers"] and record["quantized_layers"] > 2
        return [
            float(m.quant.scale) for m in model.modules() if hasattr(m, "quant") and hasattr(m.quant, "scale")
        ]

    real = input_scales(token_ids(32))
    constant = input_scales(np.full((32, 16), 7, dtype=np.int64))
    assert len(real) == len(constant) > 2
    assert sum(abs(a - b) > 1e-6 * max(a, b) for a, b in zip(real, constant, strict=True)) > len(real) // 2


def test_the_evaluation_set_never_overlaps_the_calibration_set(tmp_path: Path, cache: Path) -> None:
    from autotuner.models.dataset import data_sets
    from autotuner.spec.loading import parse_spec

    ids = np.repeat(token_ids(70), 3, axis=0)  # every sample three times: 70 distinct
    np.savez(tmp_path / "data.npz", input_ids=ids, label=np.repeat(np.arange(70), 3))
    spec = parse_spec(
        {**spec_dict(tmp_path), "data": {"file": "data.npz", "calibration": 30, "evaluation": 40}}
    )
    spec = spec.model_copy(update={"base_dir": str(tmp_path)})
    sets = data_sets(spec)
    cal = {r.tobytes() for r in sets.calibration["input_ids"]}
    ev = [r.tobytes() for r in sets.evaluation["input_ids"]]
    assert len(cal) == 30 and len(ev) == len(set(ev)) == 40
    assert not cal & set(ev)
    assert sets.distinct == 70 and sets.duplicates == 140
    assert sorted(sets.evaluation) == ["input_ids", "label"]  # labels travel with the evaluation set
    # With a group, a group's samples all land in one set.
    pairs = np.repeat(np.arange(35), 2)
    np.savez(tmp_path / "paired.npz", input_ids=token_ids(70), pair=pairs)
    grouped = spec.model_copy(
        update={"data": spec.data.model_copy(update={"file": "paired.npz", "group": "pair"})}
    )
    g = data_sets(grouped)
    ev_pairs = set(g.evaluation["pair"].tolist())
    cal_rows = {r.tobytes() for r in g.calibration["input_ids"]}
    for p in ev_pairs:
        for row in token_ids(70)[pairs == p]:
            assert row.tobytes() not in cal_rows


def test_builtin_sentences_are_real_paraphrase_pairs() -> None:
    from autotuner.models.dataset import SENTENCES

    lines = SENTENCES.read_text(encoding="utf-8").splitlines()
    pairs = [int(line.split("\t")[0]) for line in lines]
    texts = [line.split("\t")[1] for line in lines]
    assert len(lines) >= 300 and len(set(texts)) == len(texts)
    assert all(pairs.count(p) == 2 for p in set(pairs))
    assert all(len(t.split()) >= 6 for t in texts)


def _metric_module(directory: Path) -> None:
    (directory / "mymetric.py").write_text(
        "import numpy as np\n"
        "def boom(outputs, evaluation):\n"
        "    raise ValueError('no labels named target here')\n"
        "def nan(outputs, evaluation):\n"
        "    return float('nan')\n"
        "def agreement(outputs, evaluation):\n"
        "    return float((outputs.argmax(1) == evaluation['label']).mean()) + 0.5\n"
    )


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        ("boom", "accuracy.metric mymetric:boom raised ValueError: no labels named target here"),
        ("nan", "accuracy.metric mymetric:nan returned nan (not a finite number)"),
    ],
)
def test_a_task_metric_that_raises_or_returns_nan_is_an_invalid_metric_fail(
    tmp_path: Path, cache: Path, metric: str, message: str
) -> None:
    from autotuner.api import bench

    _metric_module(tmp_path)
    spec = spec_dict(tmp_path, accuracy={"metric": f"mymetric:{metric}"})
    spec["space"] = {"backend": ["torch-eager"], "precision": ["fp32"], "batch_size": [4], "threads": [1]}
    path = write(tmp_path, spec, token_ids(80), label=np.arange(80) % 8)
    _, result = bench(path, {})
    assert not result.ok
    assert result.failure_class == "invalid-metric"
    assert result.failure_message == message


def test_the_task_score_is_measured_on_the_evaluation_set_against_fp32s(tmp_path: Path, cache: Path) -> None:
    from autotuner.api import bench

    _metric_module(tmp_path)
    spec = spec_dict(
        tmp_path,
        accuracy={"metric": "mymetric:agreement"},
        constraints=["accuracy_task >= 0.98 * fp32"],
    )
    spec["space"] = {"backend": ["onnxruntime-cpu"], "precision": ["fp32", "int8"], "batch_size": [4]}
    path = write(tmp_path, spec, token_ids(80), label=np.arange(80) % 8)
    _, fp32 = bench(path, {"precision": "fp32"})
    _, int8 = bench(path, {"precision": "int8"})
    assert fp32.ok and int8.ok, (fp32.failure_message, int8.failure_message)
    assert fp32.metrics["accuracy_task_vs_fp32"] == pytest.approx(1.0)
    assert fp32.metrics["accuracy_cosine"] > 0.9999
    assert 0.5 <= int8.metrics["accuracy_task"] <= 1.5
    assert int8.metrics["accuracy_task_vs_fp32"] == pytest.approx(
        int8.metrics["accuracy_task"] / fp32.metrics["accuracy_task"]
    )
    assert int8.metrics["accuracy_cosine"] < 0.99999  # int8 really ran: its outputs moved
    assert int8.info["quantization"]["settings"]["calibration"] == "minmax"
    # The data it was measured on travels with the trial (the best-config YAML reads it there).
    assert int8.info["data"]["sha256"] == int8.info["quantization"]["data_sha256"]
    assert int8.info["data"]["evaluation_samples"] == 32
    assert int8.info["model_file_mb"] < 0.6 * fp32.info["model_file_mb"]


BAD_DATA = [
    pytest.param(
        {"ids": None, "other": token_ids(80)},
        {},
        "data.file: data.npz has no 'input_ids' (the model's inputs: input_ids; it holds: other)",
        id="input-missing",
    ),
    pytest.param(
        {"ids": token_ids(80).astype(np.float32)},
        {},
        "data.file: data.npz: 'input_ids' is float32; the input is int64",
        id="wrong-dtype",
    ),
    pytest.param(
        {"ids": token_ids(80)[:, :, None]},
        {},
        "data.file: data.npz: 'input_ids' has 3 axes [80, 16, 1]; the input has 2 (batch, 16)",
        id="wrong-rank",
    ),
    pytest.param(
        {"ids": token_ids(80)[:, :8]},
        {},
        "data.file: data.npz: 'input_ids' samples are [8]; the input's are [16]",
        id="wrong-shape",
    ),
    pytest.param(
        {"ids": token_ids(50)},
        {},
        "data.calibration: the data holds 50 distinct samples; calibration 32 + evaluation 32 need 64",
        id="too-few-samples",
    ),
    pytest.param(
        {"ids": np.repeat(token_ids(40), 2, axis=0)},
        {},
        "data.calibration: the data holds 40 distinct samples (40 repeated samples dropped); "
        "calibration 32 + evaluation 32 need 64",
        id="too-few-distinct",
    ),
    pytest.param(
        {"ids": token_ids(80)},
        {"accuracy": {"metric": "nosuchpkg.scores:f1"}},
        "accuracy.metric: cannot import 'nosuchpkg.scores'",
        id="metric-does-not-import",
    ),
    pytest.param(
        {"ids": None},
        {"data": {"file": "missing.npz"}},
        "data.file: no such file: {d}/missing.npz",
        id="file-missing",
    ),
    pytest.param(
        {"ids": None},
        {"data": {"file": "data.csv"}},
        "data.file: 'data.csv' must be an .npz (one array per input name) or a .jsonl file",
        id="file-kind",
    ),
    pytest.param(
        {"ids": token_ids(80)},
        {"data": None},
        "space.precision: int8 is static INT8, calibrated on real inputs, and this spec has no data section",
        id="int8-without-data",
    ),
    pytest.param(
        {"ids": token_ids(80)},
        {"constraints": ["accuracy_cosine >= 0.9 * fp32"]},
        "constraints[0]: 'accuracy_cosine >= 0.9 * fp32': a bound relative to fp32 applies to accuracy_task",
        id="relative-bound-on-another-metric",
    ),
    pytest.param(
        {"ids": token_ids(80)},
        {"constraints": ["accuracy_task >= 0.98 * fp32"]},
        "constraints[0]: accuracy_task is the score of accuracy.metric, which this spec does not give",
        id="task-bound-without-metric",
    ),
]


@pytest.mark.parametrize(("files", "change", "expected"), BAD_DATA)
def test_bad_data_is_one_line_and_exit_2_before_a_study(
    tmp_path: Path, files: dict[str, Any], change: dict[str, Any], expected: str
) -> None:
    spec = {**spec_dict(tmp_path), **change}
    if spec.get("data") is None:
        spec.pop("data")
    arrays = {k: v for k, v in files.items() if k != "ids" and v is not None}
    write(tmp_path, spec, files.get("ids"), **arrays)
    proc = _cli(tmp_path, "run", "spec.yaml")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("autotune: error: spec.yaml: " + expected.format(d=tmp_path)), lines[0]
    assert not (tmp_path / "studies").exists()


def test_jsonl_data_with_a_bad_line_names_it(tmp_path: Path) -> None:
    rows = [json.dumps({"input_ids": r.tolist()}) for r in token_ids(80)]
    rows[6] = '{"input_ids": [1, 2'
    (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n")
    write(
        tmp_path, {**spec_dict(tmp_path), "data": {"file": "data.jsonl", "calibration": 32, "evaluation": 32}}
    )
    proc = _cli(tmp_path, "run", "spec.yaml")
    assert proc.returncode == 2
    assert "data.file: data.jsonl line 7 is not JSON" in proc.stderr


def test_jsonl_data_reads_like_npz(tmp_path: Path, cache: Path) -> None:
    from autotuner.api import load_spec
    from autotuner.models.dataset import data_sets

    ids = token_ids(80)
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"input_ids": r.tolist(), "y": 1}) + "\n" for r in ids)
    )
    np.savez(tmp_path / "data.npz", input_ids=ids, y=np.ones(80, dtype=np.int64))
    js = write(
        tmp_path, {**spec_dict(tmp_path), "data": {"file": "data.jsonl", "calibration": 32, "evaluation": 32}}
    )
    a = data_sets(load_spec(js))
    b = data_sets(load_spec(write(tmp_path, spec_dict(tmp_path))))
    assert np.array_equal(a.calibration["input_ids"], b.calibration["input_ids"])
    assert a.sha256 == b.sha256


def test_quantization_knobs_apply_to_int8_only_and_to_each_runners_calibrators() -> None:
    from autotuner.backends.onnxruntime.runner import OnnxRuntimeRunner
    from autotuner.backends.torch_runner import TorchRunner
    from autotuner.spec.loading import parse_spec

    spec = parse_spec({**spec_dict(Path(".")), "space": {"backend": ["torch-eager", "onnxruntime-cpu"]}})
    caps = {"cpu_cores": 2, "ort_providers": ["CPUExecutionProvider"]}
    ort = {"backend": "onnxruntime-cpu", "precision": "int8"}
    torch = {"backend": "torch-eager", "precision": "int8"}
    assert OnnxRuntimeRunner.check(spec, {**ort, "calibration": "entropy"}, caps) is None
    assert "histogram is not one of onnxruntime's" in (
        OnnxRuntimeRunner.check(spec, {**ort, "calibration": "histogram"}, caps) or ""
    )
    assert "entropy is not one of torch's" in (
        TorchRunner.check(spec, {**torch, "calibration": "entropy"}, caps) or ""
    )
    assert (
        TorchRunner.check(spec, {**torch, "calibration": "histogram", "int8_exclude": "first-last"}, caps)
        is None
    )
    assert OnnxRuntimeRunner.check(spec, {**ort, "precision": "fp32", "per_channel": False}, caps) == (
        "per_channel applies to precision int8 (static, calibrated)"
    )
    assert "not a regular expression" in (
        OnnxRuntimeRunner.check(spec, {**ort, "int8_exclude": "re:(("}, caps) or ""
    )
    assert "torch.compile cannot trace" in (
        TorchRunner.check(spec, {**torch, "backend": "torch-compile"}, caps) or ""
    )
    cuda = {**torch, "device": "cuda"}
    assert "CPU only" in (TorchRunner.check(spec, cuda, {**caps, "cuda_devices": [{"index": 0}]}) or "")
    gpu = {"backend": "onnxruntime-cuda", "precision": "int8-dynamic"}
    offered = {**caps, "ort_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    assert "use int8 (calibrated QDQ)" in (OnnxRuntimeRunner.check(spec, gpu, offered) or "")
    assert OnnxRuntimeRunner.check(spec, {**gpu, "precision": "int8"}, offered) is None


def test_the_best_config_names_the_calibration_the_data_and_the_command_that_remakes_it(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import autotuner

    spec = spec_dict(tmp_path)
    spec["space"] = {
        "backend": "onnxruntime-cpu",
        "precision": "int8",
        "per_channel": [True, False],
        "int8_exclude": "first-last",
        "batch_size": 4,
        "threads": 1,
    }
    path = write(tmp_path, spec, token_ids(80))
    monkeypatch.chdir(tmp_path)
    out = autotuner.run(path, trials=2)
    best = yaml.safe_load(Path(out.best_config_path).read_text())
    q = best["quantization"]
    assert q["calibration"] == "minmax" and q["exclude"] == "first-last" and len(q["excluded_nodes"]) == 2
    assert q["per_channel"] == best["params"]["per_channel"]
    assert best["data"]["sha256"] == q["data_sha256"]
    assert best["data"]["calibration_samples"] == 32 and best["data"]["evaluation_samples"] == 32
    assert best["deploy"]["onnxruntime"]["quantization"]["method"].startswith("static, QDQ")
    argv = q["recreate_command"].split()
    assert argv[:3] == ["autotune", "quantize", str(path)] and argv[-2:] == ["-o", "model.int8.onnx"]
    proc = subprocess.run(
        [sys.executable, "-m", "autotuner.cli", *argv[1:]],
        cwd=tmp_path,
        env={**os.environ, "AUTOTUNE_CACHE_DIR": str(tmp_path / "fresh")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    from autotuner.files import file_sha256

    # The winner's model as its trials ran it ("pc": per-channel weight scales, "pt": per tensor).
    tag = "pc" if best["params"]["per_channel"] else "pt"
    measured = [p for p in (cache / "onnx").glob(f"*.int8-minmax-{tag}-*.onnx")]
    assert len(measured) == 1
    remade = file_sha256(tmp_path / "model.int8.onnx")
    assert remade == file_sha256(measured[0]), "re-created from nothing, byte for byte the measured model"
    assert remade in proc.stdout


# --- on a GPU: the QDQ model on the CUDA and TensorRT providers (skipped without one) ---------


def _ort_gpu(provider: str) -> bool:
    try:
        import onnxruntime as ort
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and provider in ort.get_available_providers()


@pytest.mark.parametrize(
    ("backend", "provider", "extra"),
    [
        pytest.param(
            "onnxruntime-cuda",
            "CUDAExecutionProvider",
            {},
            marks=pytest.mark.skipif(
                not _ort_gpu("CUDAExecutionProvider"),
                reason="no CUDA device with onnxruntime's CUDA provider",
            ),
        ),
        pytest.param(
            "onnxruntime-tensorrt",
            "TensorrtExecutionProvider",
            {"tf32": True},
            marks=pytest.mark.skipif(
                not _ort_gpu("TensorrtExecutionProvider"),
                reason="no CUDA device with onnxruntime's TensorRT provider",
            ),
        ),
    ],
)
def test_static_int8_runs_its_qdq_model_on_a_gpu(
    tmp_path: Path, cache: Path, backend: str, provider: str, extra: dict[str, Any]
) -> None:
    from autotuner.api import bench

    spec = spec_dict(tmp_path)
    spec["space"] = {
        "backend": [backend],
        "precision": ["int8"],
        "batch_size": [4],
        **{k: [v] for k, v in extra.items()},
    }
    _, result = bench(write(tmp_path, spec, token_ids(80)), {})
    assert result.ok, result.failure_message
    assert result.info["quantization"]["settings"]["activations"] == "int8-symmetric"
    assert result.info["node_placement"]["cpu_compute"] == []
    assert result.metrics["accuracy_cosine"] > 0.9


def test_the_paraphrase_scores_grade_bent_embeddings() -> None:
    from autotuner.models.tasks import paraphrase_margin, paraphrase_mrr

    rng = np.random.default_rng(0)
    pairs = {"pair": np.repeat(np.arange(32), 2)}
    clean = np.repeat(rng.normal(size=(32, 16)), 2, axis=0) + 0.3 * rng.normal(size=(64, 16))
    bent = clean + 0.6 * rng.normal(size=clean.shape)
    assert paraphrase_mrr(clean, pairs) == 1.0  # every paraphrase is its sentence's nearest
    assert paraphrase_mrr(bent, pairs) < 1.0
    assert 0 < paraphrase_margin(bent, pairs) < paraphrase_margin(clean, pairs)
    shuffled = {"pair": rng.permutation(pairs["pair"])}
    assert paraphrase_margin(clean, shuffled) < 0  # labels that are not paraphrases: no margin
    with pytest.raises(ValueError, match="needs a 'pair' label"):
        paraphrase_margin(clean, {})


def test_a_study_resumed_on_changed_data_says_so(tmp_path: Path, cache: Path) -> None:
    import io

    from autotuner.api import check_model, load_spec, open_study
    from autotuner.progress import Progress
    from autotuner.study import records as rec

    path = write(tmp_path, spec_dict(tmp_path), token_ids(80))
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec(path)
    check_model(spec)
    study = open_study(spec, storage=url)
    first = rec.study_attr(study, rec.DATA_SHA256)
    assert first and len(first) == 64
    out = io.StringIO()
    open_study(spec, storage=url, progress=Progress(out))  # the same data: nothing to say
    assert "data" not in out.getvalue()
    write(tmp_path, spec_dict(tmp_path), token_ids(80, seed=1))
    changed = load_spec(path)
    check_model(changed)
    open_study(changed, storage=url, progress=Progress(out))
    assert (
        f"the data's content changed since study 'q8' was created (sha256 {first[:12]} ->" in out.getvalue()
    )


def test_a_study_from_before_static_int8_exports_its_int8_as_dynamic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study stored by the version whose `int8` was dynamic quantization (emulated: a real study
    whose every stored 'int8-dynamic' is rewritten to 'int8' in the database) still exports, and
    says what was measured."""
    import sqlite3

    import autotuner
    from autotuner.api import export

    spec = {
        "name": "old",
        "model": TINY,
        "space": {"backend": ["onnxruntime-cpu"], "precision": ["int8-dynamic"], "batch_size": [2, 4]},
        "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
        "measurement": {"warmup_iters": 1, "min_iters": 3, "min_time_s": 0.05, "max_time_s": 0.2},
        "pick": {"rounds": 0},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    autotuner.run(tmp_path / "spec.yaml", trials=2)
    db = tmp_path / "studies" / "old.db"
    with sqlite3.connect(db) as conn:
        for table in ("study_user_attributes", "trial_user_attributes"):
            conn.execute(f"UPDATE {table} SET value_json = replace(value_json, 'int8-dynamic', 'int8')")
        conn.execute(
            "UPDATE trial_params SET distribution_json = replace(distribution_json, 'int8-dynamic', 'int8')"
        )
    import optuna

    stored = optuna.load_study(study_name="old", storage=f"sqlite:///{db}")
    assert stored.user_attrs["spec"]["space"]["precision"]["choices"] == ["int8"]  # as the old version wrote
    assert {t.user_attrs["config"]["precision"] for t in stored.trials} == {"int8"}
    path = export("old", output=str(tmp_path / "old.best.yaml"))
    best = yaml.safe_load(Path(path).read_text())
    assert best["params"]["precision"] == "int8-dynamic"
    assert "quantize_dynamic" in best["deploy"]["onnxruntime"]["quantization"]
    assert "quantization" not in best and "--set precision=int8-dynamic" in best["remeasure_command"]
